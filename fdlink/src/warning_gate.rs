//! At most one warning per period about an event that may repeat fast (refused connections,
//! skipped frames): the others are counted, and the next warning says how many there were.

use std::time::{Duration, Instant};

/// Decides which occurrences of an event get a warning.
#[derive(Debug)]
pub struct WarningGate {
    period: Duration,
    last: Option<Instant>,
    /// Occurrences since the last warning.
    unwarned: u64,
}

impl WarningGate {
    /// A gate that lets one warning through per `period`.
    pub const fn new(period: Duration) -> WarningGate {
        WarningGate {
            period,
            last: None,
            unwarned: 0,
        }
    }

    /// `n` more occurrences. Some(k): warn now, of the k occurrences since the last warning
    /// (these `n` included); None: they are counted for the next warning.
    pub fn note(&mut self, n: u64) -> Option<u64> {
        self.unwarned += n;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unwarned))
    }

    /// Tests: the period since the last warning is over.
    #[cfg(test)]
    pub(crate) fn expire(&mut self) {
        self.last = self.last.map(|t| t - self.period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_period_with_the_count_between() {
        let period = Duration::from_secs(5);
        let mut gate = WarningGate::new(period);
        assert_eq!(gate.note(1), Some(1), "the first occurrence is a warning");
        assert_eq!(gate.note(1), None);
        assert_eq!(gate.note(2), None);
        gate.expire();
        assert_eq!(
            gate.note(1),
            Some(4),
            "the next warning counts those between"
        );
        assert_eq!(gate.note(1), None);
    }
}
