//! Timestamp translation between a pipeline's clock and CLOCK_MONOTONIC, the time base both
//! processes share.

use gst::prelude::*;

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_now() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Offset to add to a time of `clock` to get CLOCK_MONOTONIC (signed, in ns).
pub fn clock_to_monotonic_offset(clock: &gst::Clock) -> i128 {
    // Sample the two clocks back to back; the system clock is CLOCK_MONOTONIC already,
    // so for it the offset comes out as (almost) zero.
    let c = clock.time().nseconds() as i128;
    let m = monotonic_now() as i128;
    m - c
}

/// Running time (plus the element's base time) to CLOCK_MONOTONIC ns.
pub fn running_to_monotonic(
    running: gst::ClockTime,
    base_time: gst::ClockTime,
    offset: i128,
) -> Option<u64> {
    let t = running.nseconds() as i128 + base_time.nseconds() as i128 + offset;
    u64::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_saturates_instead_of_wrapping() {
        let base = gst::ClockTime::from_seconds(10);
        assert_eq!(
            running_to_monotonic(gst::ClockTime::ZERO, base, -(1i128 << 70)),
            None
        );
        assert_eq!(
            running_to_monotonic(gst::ClockTime::from_seconds(1), base, 7),
            Some(11_000_000_007)
        );
    }
}
