//! The hub's counters, all consumers together and per consumer (fdlinksink's `stats`).

use std::time::Instant;

use super::{Hub, RetiredFiles};

/// Counters exposed in the `stats` property.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    pub frames_in: u64,
    pub frames_sent: u64,
    pub frames_zero_copy: u64,
    pub frames_copied: u64,
    /// Frames without bytes (no memory, or only zero-sized ones), sent without an fd for
    /// memory; counted in neither `frames_zero_copy` nor `frames_copied`.
    pub frames_empty: u64,
    pub bytes_copied: u64,
    pub frames_dropped: u64,
    /// Frames copied into the memfd pool for consumers at max-held (slow-policy=copy).
    pub slow_copies: u64,
    pub frames_without_consumer: u64,
    pub releases: u64,
    pub consumers_total: u64,
    /// Connections refused at accept: for their credentials (see `PeerPolicy`), past
    /// `max-clients`, or for the fd reserve (see `admission`).
    pub consumers_refused: u64,
    /// Fds sent with buffer packets, to all consumers.
    pub fds_sent: u64,
    /// Files registered with a consumer (one per file and consumer).
    pub files_registered: u64,
    /// Registered files retired (their memories were freed), per consumer that had them.
    pub files_retired: u64,
}

/// One consumer's counters, for the `stats` property.
#[derive(Debug, Clone)]
pub struct ConsumerStats {
    pub id: u64,
    pub pid: i32,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    /// Frames sent to it as slow-policy=copy copies.
    pub frames_copied: u64,
    pub held: u32,
    /// Buffers waiting in its queue for room in its socket.
    pub queued: u32,
    pub releases: u64,
    pub bytes_sent: u64,
    pub idle_ms: u64,
    /// Mean time from sending a buffer to its release, in µs (0 before the first release).
    pub release_avg_us: u64,
    /// Fds sent with its buffer packets (register-once fds: about one per pool buffer).
    pub fds_sent: u64,
    /// Files it has registered now.
    pub files_registered: u32,
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// The counters, the ready consumers, and the frames held now.
    pub fn stats(&self) -> (HubStats, u32, u32) {
        let inner = self.lock();
        let ready = inner.consumers.iter().filter(|c| c.is_ready()).count() as u32;
        let mut stats = inner.stats.clone();
        for c in &inner.consumers {
            stats.fds_sent += c.fds_sent;
            stats.files_registered += c.registrations;
        }
        (stats, ready, inner.held.len() as u32)
    }

    pub fn num_consumers(&self) -> u32 {
        self.stats().1
    }

    /// Per-consumer counters.
    pub fn consumer_stats(&self) -> Vec<ConsumerStats> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .consumers
            .iter()
            .filter(|c| c.is_ready())
            .map(|c| ConsumerStats {
                id: c.id,
                pid: c.pid.unwrap_or(0),
                frames_sent: c.frames_sent,
                frames_dropped: c.frames_dropped,
                frames_copied: c.frames_copied,
                held: c.held.len() as u32,
                queued: c.queued_buffers as u32,
                releases: c.releases,
                bytes_sent: c.bytes_sent,
                idle_ms: now.duration_since(c.last_activity).as_millis() as u64,
                release_avg_us: (c.release_wait.as_micros() as u64)
                    .checked_div(c.releases)
                    .unwrap_or(0),
                fds_sent: c.fds_sent,
                files_registered: c.files.len() as u32,
            })
            .collect()
    }
}
