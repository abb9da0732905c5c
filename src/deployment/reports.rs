//! How calls that nobody waits for reach their deployment actor: queued here, and the actor
//! drains the queue every `SPACING` while calls come, instead of being woken by each one.
//!
//! A message per call woke the actor's task once per request, and with a second task ready at
//! the same moment (the provider connection's, given back to its pool) the runtime woke its
//! other worker too: one more context switch per request than a bare passthrough makes. Now
//! the first report after a quiet spell wakes the actor; it drains what came, then looks again
//! `SPACING` later, until a look finds nothing.
//!
//! Order holds where it matters: the actor drains the queue before it handles any message, so
//! a failure that must move the breaker (sent as a message, and waited for) is applied after
//! every success reported before it, and a status snapshot counts every call reported before
//! it was asked. What the queue delays by at most `SPACING` is the actor's own figures: latency
//! average, the window's record of units already counted as in flight, the status counters.
//!
//! Bounded: `CAPACITY` reports; a report that finds it full is sent as a message, whose source
//! is bounded as every `Finished` is (one per attempt in flight).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Finished;

/// Reports waiting for the actor, per deployment; a burst beyond it goes by message.
pub const CAPACITY: usize = 4096;
/// How long a report may wait for the actor while calls keep coming.
pub const SPACING: Duration = Duration::from_millis(20);

pub struct Reports {
    tx: mpsc::Sender<Finished>,
    /// Only the actor takes it (the lock is never contended); it outlives a restarted actor.
    rx: Mutex<mpsc::Receiver<Finished>>,
    /// A drain is due: the actor has been told, or looks again within `SPACING`.
    armed: AtomicBool,
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("queued", &(CAPACITY - self.tx.capacity()))
            .field("armed", &self.armed.load(SeqCst))
            .finish()
    }
}

impl Default for Reports {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Self {
            tx,
            rx: Mutex::new(rx),
            armed: AtomicBool::new(false),
        }
    }
}

/// What became of a report offered to the queue.
pub enum Queued {
    /// Queued; the actor must be told to drain (no drain was due).
    Wake,
    /// Queued; a drain is already due.
    Due,
    /// The queue is full: send it as a message.
    Full(Box<Finished>),
}

impl Reports {
    pub fn push(&self, f: Finished) -> Queued {
        match self.tx.try_send(f) {
            Ok(()) if self.armed.swap(true, SeqCst) => Queued::Due,
            Ok(()) => Queued::Wake,
            Err(mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f)) => {
                Queued::Full(Box::new(f))
            }
        }
    }

    /// Hands every queued report to `apply`, oldest first; returns how many.
    pub fn drain(&self, mut apply: impl FnMut(Finished)) -> usize {
        // A poisoned lock only means an actor panicked while draining: the queue is whole.
        let mut rx = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        while let Ok(f) = rx.try_recv() {
            apply(f);
            n += 1;
        }
        n
    }

    /// After a drain that found nothing: no drain is due any more, unless a report came in the
    /// meantime — then this takes the drain on again and says so (the caller schedules it).
    pub fn settle(&self) -> bool {
        self.armed.store(false, SeqCst);
        let queued = self.tx.capacity() < CAPACITY;
        queued && !self.armed.swap(true, SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::gate::Admitted;

    fn report() -> Finished {
        Finished {
            admitted: Admitted {
                probe: false,
                rpm: 0,
                tpm: 0,
                at: std::time::Instant::now(),
            },
            latency: Duration::from_millis(1),
            outcome: super::super::Outcome::Abandoned,
            ack: None,
        }
    }

    #[test]
    fn the_first_report_wakes_the_actor_and_the_next_ones_wait_for_its_drain() {
        let r = Reports::default();
        assert!(matches!(r.push(report()), Queued::Wake));
        assert!(matches!(r.push(report()), Queued::Due));
        assert_eq!(r.drain(|_| {}), 2);
        // Still armed after a drain that found some: the actor looks again later.
        assert!(matches!(r.push(report()), Queued::Due));
        assert_eq!(r.drain(|_| {}), 1);
        assert_eq!(r.drain(|_| {}), 0);
        assert!(!r.settle(), "nothing came: no drain is due");
        assert!(matches!(r.push(report()), Queued::Wake));
    }

    #[test]
    fn a_report_that_comes_while_the_actor_settles_is_not_left_behind() {
        let r = Reports::default();
        assert!(matches!(r.push(report()), Queued::Wake));
        assert_eq!(r.drain(|_| {}), 1);
        // Queued while armed (it wakes nobody), just before the actor settles.
        assert!(matches!(r.push(report()), Queued::Due));
        assert!(r.settle(), "the actor must drain again");
        assert!(matches!(r.push(report()), Queued::Due));
        assert_eq!(r.drain(|_| {}), 2);
    }

    #[test]
    fn a_full_queue_hands_the_report_back() {
        let r = Reports::default();
        for _ in 0..CAPACITY {
            assert!(!matches!(r.push(report()), Queued::Full(_)));
        }
        assert!(matches!(r.push(report()), Queued::Full(_)));
        assert_eq!(r.drain(|_| {}), CAPACITY);
    }
}
