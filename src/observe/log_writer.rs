//! Where log lines go: a bounded queue and one thread that writes them out in batches.
//!
//! A request's `info` line must not cost it a wake-up of another thread. tracing-appender's
//! non-blocking writer wakes its writer thread for every line (a futex wake on the request's
//! path, then the writer spins through `sched_yield` before it parks again: 4 of them a request,
//! `strace -c -f`, on a 2-core machine where that thread competes with the two runtime workers).
//! Here the writer thread is never woken by a line: it wakes by itself every `TICK`, writes
//! what has queued in one buffered write, and sleeps again; a sender wakes it only when the
//! queue is half full. A line reaches stderr at most `TICK` after it was logged.
//!
//! Bounded: the queue holds `capacity` lines; when it is full (the writer cannot keep up, or
//! stderr blocks), logging waits for room instead of growing memory or dropping lines.
//! On drop, the `Guard` has the thread write everything queued, then joins it.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait for the writer thread.
pub const TICK: Duration = Duration::from_millis(20);

/// The `MakeWriter` handed to the log layer.
#[derive(Clone)]
pub struct LogWriter {
    lines: Sender<Vec<u8>>,
    writer: Thread,
    half: usize,
}

/// Keeps the writer thread until dropped, then has it write what is queued and stop.
pub struct Guard {
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// A writer thread writing to `out`, which it buffers (64 KiB) and flushes after each batch.
    pub fn spawn(out: impl Write + Send + 'static, capacity: usize) -> (Self, Guard) {
        let (lines, queue) = crossbeam_channel::bounded(capacity.max(2));
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let thread = std::thread::Builder::new()
            .name("switchyard-log".into())
            .spawn(move || write_batches(queue, out, &stop))
            .expect("spawn the log writer thread");
        let writer = Self {
            lines,
            writer: thread.thread().clone(),
            half: capacity.max(2) / 2,
        };
        (
            writer,
            Guard {
                closing,
                thread: Some(thread),
            },
        )
    }

    fn push(&self, line: Vec<u8>) {
        match self.lines.try_send(line) {
            Ok(()) => {
                if self.lines.len() >= self.half {
                    self.writer.unpark();
                }
            }
            Err(TrySendError::Full(line)) => {
                // Full: wake the writer and wait for room, as a blocking writer would.
                self.writer.unpark();
                let _ = self.lines.send(line);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn write_batches(queue: Receiver<Vec<u8>>, out: impl Write, closing: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Read before draining, so that lines queued before the close are written.
        let last = closing.load(Ordering::Acquire);
        let mut wrote = false;
        while let Ok(line) = queue.try_recv() {
            // A failed write to stderr has nowhere to be reported.
            let _ = out.write_all(&line);
            wrote = true;
        }
        if wrote {
            let _ = out.flush();
        }
        if last {
            return;
        }
        std::thread::park_timeout(TICK);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// One line's writer: tracing-subscriber formats the whole line, then writes it at once.
pub struct Line<'a> {
    writer: &'a LogWriter,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line { writer: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let out = Out::default();
        // A queue far smaller than the lines: senders wait for room, nothing is lost.
        let (writer, guard) = LogWriter::spawn(out.clone(), 8);
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        writer
                            .make_writer()
                            .write_all(format!("{t} {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..500).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn a_line_is_written_without_anyone_waking_the_writer() {
        /// Tells the test each time the writer thread writes.
        struct Told(std::sync::mpsc::Sender<Vec<u8>>);
        impl Write for Told {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (tx, written) = std::sync::mpsc::channel();
        let (writer, guard) = LogWriter::spawn(Told(tx), 1024);
        writer.make_writer().write_all(b"one line\n").unwrap();
        // Far below half the queue, so nobody unparks the writer: its own tick writes the line,
        // while the guard (whose drop would write it too) is still held.
        let line = written.recv_timeout(Duration::from_secs(10));
        assert_eq!(line.as_deref(), Ok(&b"one line\n"[..]));
        drop(guard);
    }
}
