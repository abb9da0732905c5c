//! Instructions per request, counted by valgrind's callgrind: the figure that does not drift
//! with the machine's load (`docs/performance.md`, "Measuring on a noisy machine").
//!
//! Each target is started again under `valgrind --tool=callgrind --instr-atstart=no`, warmed up,
//! then counted for exactly `n` sequential requests (`callgrind_control -i on` … `-i off`); the
//! process is stopped and the `totals:` line of its output divided by `n`. All threads count,
//! so work moved to a background task still shows. Kernel time (syscalls) does not: this is the
//! user-space share, where the engine's own work is.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;

use crate::load;
use crate::procs::Proc;

/// Whether valgrind and callgrind_control are installed (else the bench skips this part).
pub fn available() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `program args` under callgrind, waits until `start` says where its door is (it reads
/// the process's first line or waits for its NATS endpoints), warms it up with `warmup`
/// requests and returns the instructions per request over `n` more.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site, each argument named there"
)]
pub async fn per_request(
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    out: &Path,
    body: &Bytes,
    warmup: usize,
    n: usize,
    start: impl AsyncFnOnce(&mut Proc) -> load::Door,
) -> Result<f64, String> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(&mut cmd, &out.with_extension("log"));
    let door = start(&mut proc).await;
    let warm = load::sequential(&door, body, warmup).await;
    if warm.errors > 0 {
        return Err(format!(
            "{} of {warmup} warm-up requests failed",
            warm.errors
        ));
    }
    let pid = proc.pid().to_string();
    control(&pid, "on")?;
    let counted = load::sequential(&door, body, n).await;
    control(&pid, "off")?;
    // SIGTERM: the engine drains and exits, and callgrind writes its output.
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = proc.child.wait();
    if counted.errors > 0 {
        return Err(format!("{} of {n} counted requests failed", counted.errors));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let total: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no totals line in {}", out.display()))?;
    Ok(total as f64 / n as f64)
}

fn control(pid: &str, on_off: &str) -> Result<(), String> {
    // The switch is asynchronous on callgrind's side; `callgrind_control` returns once it is
    // done, and the requests that follow are counted.
    let ok = Command::new("callgrind_control")
        .args(["-i", on_off, pid])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    } else {
        Err(format!("callgrind_control -i {on_off} {pid} failed"))
    }
}
