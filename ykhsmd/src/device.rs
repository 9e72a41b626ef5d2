//! The device's own thread: with `backend = "yubihsm"` every exchange with
//! the HSM runs here, one after the other, in the order asked.
//!
//! A YubiHSM answers one request at a time and takes milliseconds to do it
//! (seconds, when it hangs until the deadline). Nothing else waits for it:
//! the acceptor threads and the event loop do the checks that need no
//! device (the peer, the authfile, the OTP's form, the AEAD file) and queue
//! only the decode, so a `NO_KEYS_FOR_USER` or a `HasUser` is answered at
//! once however busy or slow the device is. The commit then goes to the
//! commit thread, and this thread goes on with the next OTP.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// The queue in front of the device's thread. Dropping it lets the thread
/// finish what is queued and end.
#[derive(Debug)]
pub struct DeviceQueue {
    tx: Option<mpsc::Sender<Job>>,
}

impl DeviceQueue {
    /// Starts the thread. If no thread can be started, jobs are dropped
    /// unrun (their connections close: clients fail closed).
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = thread::Builder::new()
            .name("ykhsmd-device".into())
            .spawn(move || {
                for job in rx {
                    // A panic costs that request (its connection closes
                    // unanswered), not the thread.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            });
        Self {
            tx: spawned.ok().map(|_| tx),
        }
    }

    /// Queues `job`. Dropped unrun if the thread is gone.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Box::new(job));
        }
    }

    /// Waits (at most `limit`) until everything queued before this call has
    /// run: on shutdown, so the logins the device is working on get their
    /// answers before the database closes.
    pub fn drain(&self, limit: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        self.run(move || {
            let _ = tx.send(());
        });
        rx.recv_timeout(limit).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn jobs_run_in_order_and_drain_waits_for_them() {
        let q = DeviceQueue::start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let s = Arc::clone(&seen);
            q.run(move || s.lock().unwrap().push(i));
        }
        assert!(q.drain(Duration::from_secs(10)));
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_thread() {
        let q = DeviceQueue::start();
        q.run(|| panic!("boom"));
        let (tx, rx) = mpsc::channel();
        q.run(move || tx.send(7).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
    }
}
