//! The official `openai` Python SDK in a virtualenv of its own, made once per pin under the
//! target dir (`target/tmp/openai-<pin>`): `python3 -m venv` and `pip install openai==<pin>`
//! from PyPI. Test binaries running side by side take a lock file, so one makes it and the others
//! wait for it; `.ci/run` makes it up front the same way (`.ci/openai-venv`).

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

/// The SDK version the tests speak to.
pub const OPENAI_PIN: &str = "1.99.9";

/// The virtualenv's `python`, with `openai` installed.
pub fn python() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("openai-{OPENAI_PIN}"));
    let python = dir.join("bin").join("python");
    let ready = dir.join(".ready");
    if ready.exists() {
        return python;
    }
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).expect("target tmp dir");
    let lock = File::create(dir.with_extension("lock")).expect("lock file");
    lock.lock().expect("lock the venv");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("python3").arg("-m").arg("venv").arg(&dir));
        run(Command::new(dir.join("bin").join("pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(format!("openai=={OPENAI_PIN}")));
        std::fs::write(&ready, OPENAI_PIN).expect("mark the venv ready");
    }
    python
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
