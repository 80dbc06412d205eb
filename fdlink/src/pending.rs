//! Queries sent to the other side of a link, waiting for their reply: one table per consumer
//! connection, one per producer (which asks all its consumers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::QueryReplyPacket;

/// Queries sent to the other side, waiting for their reply.
#[derive(Debug, Default)]
pub struct PendingQueries {
    next_id: AtomicU32,
    replies: Mutex<HashMap<u32, Option<QueryReplyPacket>>>,
    arrived: Condvar,
    closed: AtomicBool,
}

impl PendingQueries {
    /// A fresh id for a query about to be sent.
    pub fn register(&self) -> u32 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.replies.lock().unwrap().insert(id, None);
        id
    }

    /// Drops a query that was never sent.
    pub fn forget(&self, id: u32) {
        self.replies.lock().unwrap().remove(&id);
    }

    /// Files a reply; replies nobody waits for (timed out) are dropped.
    pub fn deliver(&self, reply: QueryReplyPacket) {
        let mut replies = self.replies.lock().unwrap();
        if let Some(slot) = replies.get_mut(&reply.id) {
            *slot = Some(reply);
            self.arrived.notify_all();
        }
    }

    /// Waits for the reply to `id`; None on timeout or when the link closed.
    pub fn wait(&self, id: u32, timeout: Duration) -> Option<QueryReplyPacket> {
        let deadline = Instant::now() + timeout;
        let mut replies = self.replies.lock().unwrap();
        loop {
            if let Some(Some(_)) = replies.get(&id) {
                return replies.remove(&id).flatten();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed.load(Ordering::SeqCst) {
                replies.remove(&id);
                return None;
            }
            replies = self.arrived.wait_timeout(replies, left).unwrap().0;
        }
    }

    /// The link is gone: every waiter returns None at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _guard = self.replies.lock().unwrap();
        self.arrived.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_queries_time_out_and_a_closed_link_answers_none_at_once() {
        let pending = PendingQueries::default();
        let id = pending.register();
        assert!(pending.wait(id, Duration::from_millis(10)).is_none());
        pending.close();
        let id = pending.register();
        assert!(pending.wait(id, Duration::from_secs(5)).is_none());
    }

    #[test]
    fn a_reply_reaches_its_waiter() {
        let pending = std::sync::Arc::new(PendingQueries::default());
        let id = pending.register();
        let other = pending.register();
        let waiter = {
            let pending = pending.clone();
            std::thread::spawn(move || pending.wait(id, Duration::from_secs(5)))
        };
        let reply = |id| QueryReplyPacket {
            id,
            answered: true,
            structure: "reply".into(),
        };
        pending.deliver(reply(id));
        // A reply nobody waits for any more is dropped.
        pending.forget(other);
        pending.deliver(reply(other));
        assert_eq!(waiter.join().unwrap().map(|r| r.id), Some(id));
        assert!(pending.wait(other, Duration::from_millis(1)).is_none());
    }
}
