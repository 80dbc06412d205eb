//! Consumers' upstream events and queries, run against the producer's pipeline off the hub's
//! control thread (a flushing seek waits on the streaming thread, which may wait on releases
//! only the control thread reads), on a bounded number of threads.
//!
//! At most [`MAX_WORKERS`] threads run requests; they start as requests come and end after
//! [`IDLE_EXIT`] without one. Each consumer has at most [`MAX_PENDING_PER_CONSUMER`] requests
//! queued or running: a consumer that sends more has them refused at once (its query gets an
//! unanswered reply), so no consumer can make the producer start threads without bound or
//! keep the others' requests waiting behind a flood of its own. The queue thus holds at most
//! 16 jobs per connection, and the hub serves at most `max-clients` connections and drops
//! one that sends more than 5000 requests a second (`fdlink::hub`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Threads that run requests at once.
pub const MAX_WORKERS: usize = 4;
/// Requests one consumer may have queued or running.
pub const MAX_PENDING_PER_CONSUMER: usize = 16;
/// A worker with nothing to do for this long ends.
pub const IDLE_EXIT: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a request was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The consumer already has [`MAX_PENDING_PER_CONSUMER`] requests in.
    TooMany,
    /// No worker could be started and none runs (the process is out of threads).
    NoThread(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooMany => write!(
                f,
                "{MAX_PENDING_PER_CONSUMER} of its requests are already waiting or running"
            ),
            Refused::NoThread(e) => write!(f, "cannot start a request thread: {e}"),
        }
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<(u64, Job)>,
    /// Per consumer: requests queued or running.
    pending: HashMap<u64, usize>,
    workers: usize,
    idle: usize,
}

/// The request threads of one fdlinksink.
#[derive(Clone, Default)]
pub struct RequestPool {
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

impl RequestPool {
    /// Queues `job` for consumer `consumer`; a worker runs it as soon as one is free.
    pub fn submit(
        &self,
        consumer: u64,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), Refused> {
        let (lock, cond) = &*self.shared;
        let mut q = lock.lock().unwrap();
        let pending = q.pending.get(&consumer).copied().unwrap_or(0);
        if pending >= MAX_PENDING_PER_CONSUMER {
            return Err(Refused::TooMany);
        }
        if q.idle == 0 && q.workers < MAX_WORKERS {
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name("fdlinksink-request".into())
                .spawn(move || work(&shared))
            {
                Ok(_) => q.workers += 1,
                Err(e) if q.workers == 0 => return Err(Refused::NoThread(e.to_string())),
                // The running workers get to it.
                Err(_) => {}
            }
        }
        q.jobs.push_back((consumer, Box::new(job)));
        *q.pending.entry(consumer).or_default() += 1;
        cond.notify_one();
        Ok(())
    }

    /// Threads running or waiting for requests now.
    #[cfg(test)]
    pub fn workers(&self) -> usize {
        self.shared.0.lock().unwrap().workers
    }
}

fn work(shared: &(Mutex<Queue>, Condvar)) {
    let (lock, cond) = shared;
    let mut q = lock.lock().unwrap();
    loop {
        if let Some((consumer, job)) = q.jobs.pop_front() {
            drop(q);
            // A panicking request must not take the worker's accounting with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            q = lock.lock().unwrap();
            if let Some(n) = q.pending.get_mut(&consumer) {
                *n -= 1;
                if *n == 0 {
                    q.pending.remove(&consumer);
                }
            }
            continue;
        }
        q.idle += 1;
        let (guard, timeout) = cond.wait_timeout(q, IDLE_EXIT).unwrap();
        q = guard;
        q.idle -= 1;
        if timeout.timed_out() && q.jobs.is_empty() {
            q.workers -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_every_request_on_at_most_max_workers_threads() {
        let pool = RequestPool::default();
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        // Ten consumers' requests, each held until the gate opens: all are queued, no more
        // than MAX_WORKERS threads start.
        for consumer in 0..10u64 {
            let (tx, gate) = (tx.clone(), gate.clone());
            pool.submit(consumer, move || {
                let (open, cond) = &*gate;
                let _open = cond.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
                tx.send((consumer, std::thread::current().id())).unwrap();
            })
            .unwrap();
        }
        assert_eq!(pool.workers(), MAX_WORKERS);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let done: Vec<_> = (0..10)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let mut consumers: Vec<u64> = done.iter().map(|d| d.0).collect();
        consumers.sort();
        assert_eq!(consumers, (0..10).collect::<Vec<_>>());
        let threads: std::collections::HashSet<_> = done.iter().map(|d| d.1).collect();
        assert!(threads.len() <= MAX_WORKERS, "{} threads", threads.len());
    }

    #[test]
    fn a_flooding_consumer_is_refused_and_the_others_are_not() {
        let pool = RequestPool::default();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let held = |gate: &Arc<(Mutex<bool>, Condvar)>| {
            let gate = gate.clone();
            move || {
                let (open, cond) = &*gate;
                let _open = cond.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
            }
        };
        for _ in 0..MAX_PENDING_PER_CONSUMER {
            pool.submit(1, held(&gate)).unwrap();
        }
        assert_eq!(pool.submit(1, held(&gate)), Err(Refused::TooMany));
        // Another consumer still gets in, and runs once a worker is free.
        let (tx, rx) = mpsc::channel();
        pool.submit(2, move || tx.send(()).unwrap()).unwrap();
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // Consumer 1's requests ran, so it may send again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.submit(1, || {}).is_err() {
            assert!(std::time::Instant::now() < deadline, "still refused");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn idle_workers_end() {
        let pool = RequestPool::default();
        let (tx, rx) = mpsc::channel();
        pool.submit(1, move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(pool.workers(), 1);
        let deadline = std::time::Instant::now() + IDLE_EXIT * 3;
        while pool.workers() > 0 {
            assert!(std::time::Instant::now() < deadline, "worker still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
