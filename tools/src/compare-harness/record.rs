//! What both sides measure and print: the clocks, the frame header the producer writes and
//! the consumer reads, and the per-frame record that becomes the `RESULT` line.

use crate::Args;

const MAGIC: u32 = 0x4b4c_4446; // "FDLK"
/// Latency samples of the first frames are left out: start-up (connection, first mmap, the
/// producer's preroll wait) is not the steady state.
const WARMUP_FRAMES: u64 = 10;

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Time the hypervisor ran something else on this machine's CPUs, all CPUs together, in ms
/// (`/proc/stat` counts it in clock ticks, 10 ms here). A vCPU taken away for a millisecond
/// shows up as a latency tail that no transport caused; each run reports it to tell them apart.
fn steal_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// User + system CPU of the whole process (all threads), in microseconds.
fn cpu_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("process cpu clock");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

/// What both sides record per frame; shared with the probes.
#[derive(Default)]
pub(crate) struct Record {
    pub(crate) frames: u64,
    first_ns: u64,
    last_ns: u64,
    first_cpu: u64,
    last_cpu: u64,
    next_seq: u64,
    gaps: u64,
    bad: u64,
    /// `steal_ms()` when the count started.
    first_steal_ms: u64,
    /// (sequence number, sent at, received at), CLOCK_MONOTONIC ns, of each frame after the
    /// warm-up: the latencies, and samples=.
    arrivals: Vec<(u64, u64, u64)>,
    started: bool,
    /// Frames with a lower sequence number are not counted (warmup=).
    warmup: u64,
}

impl Record {
    /// A record that leaves the first `warmup` frames out of every count.
    pub(crate) fn with_warmup(warmup: u64) -> Self {
        Self {
            warmup,
            ..Self::default()
        }
    }

    /// Producer: counts time and CPU from now, not from the first frame.
    pub(crate) fn start(&mut self) {
        self.started = true;
        self.count_from(mono_ns());
    }

    /// The origin of the time, CPU and steal counts.
    fn count_from(&mut self, now: u64) {
        self.first_ns = now;
        self.first_cpu = cpu_us();
        self.first_steal_ms = steal_ms();
    }

    pub(crate) fn mark(&mut self) {
        let now = mono_ns();
        if self.frames == 0 && !self.started {
            self.count_from(now);
        }
        self.last_ns = now;
        self.last_cpu = cpu_us();
        self.frames += 1;
    }

    pub(crate) fn consumed(&mut self, header: Option<(u32, u64)>) {
        let now = mono_ns();
        match header {
            Some((seq, ts)) => {
                let seq = seq as u64;
                if seq < self.warmup {
                    self.next_seq = seq + 1;
                    return;
                }
                // Gaps count inside the window only.
                let expect = self.next_seq.max(self.warmup);
                if seq > expect {
                    self.gaps += seq - expect;
                }
                self.next_seq = seq + 1;
                if seq >= WARMUP_FRAMES && now >= ts {
                    self.arrivals.push((seq, ts, now));
                }
            }
            None => self.bad += 1,
        }
        self.mark();
    }

    pub(crate) fn json(&self, a: &Args, extra: &str) -> String {
        // Read before anything else here; 0 when no frame came.
        let steal = if self.frames > 0 || self.started {
            steal_ms().saturating_sub(self.first_steal_ms)
        } else {
            0
        };
        if let Some(path) = &a.samples {
            let mut text = String::from("# seq sent_ns received_ns latency_us\n");
            for (seq, sent, received) in &self.arrivals {
                let us = (received - sent) as f64 / 1000.0;
                text.push_str(&format!("{seq} {sent} {received} {us:.1}\n"));
            }
            std::fs::write(path, text).expect("samples file");
        }
        let mut lat_ns: Vec<u64> = self.arrivals.iter().map(|(_, s, r)| r - s).collect();
        lat_ns.sort_unstable();
        let pct = |p: usize| -> String {
            if lat_ns.is_empty() {
                "null".into()
            } else {
                let i = (lat_ns.len() * p / 100).min(lat_ns.len() - 1);
                format!("{:.1}", lat_ns[i] as f64 / 1000.0)
            }
        };
        let span_ns = self.last_ns.saturating_sub(self.first_ns);
        // Intervals between first and last frame; from start() every frame counts.
        let n = if self.started {
            self.frames
        } else {
            self.frames.saturating_sub(1)
        };
        let fps = if span_ns > 0 {
            format!("{:.1}", n as f64 * 1e9 / span_ns as f64)
        } else {
            "null".into()
        };
        let cpu = if n > 0 {
            format!("{:.1}", (self.last_cpu - self.first_cpu) as f64 / n as f64)
        } else {
            "null".into()
        };
        format!(
            "{{\"role\":\"{}\",\"transport\":\"{}\",\"width\":{},\"height\":{},\"rate\":{},\"expected\":{},\"frames\":{},\"gaps\":{},\"bad\":{},\"fps\":{},\"cpu_us_per_frame\":{},\"lat_samples\":{},\"lat_p50_us\":{},\"lat_p99_us\":{},\"lat_max_us\":{},\"steal_ms\":{}{}}}",
            a.role,
            a.transport,
            a.width,
            a.height,
            a.rate,
            a.counted_frames(),
            self.frames,
            self.gaps,
            self.bad,
            fps,
            cpu,
            lat_ns.len(),
            pct(50),
            pct(99),
            lat_ns
                .last()
                .map_or("null".into(), |v| format!("{:.1}", *v as f64 / 1000.0)),
            steal,
            extra
        )
    }
}

pub(crate) fn write_header(data: &mut [u8], seq: u32) {
    data[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    data[4..8].copy_from_slice(&seq.to_le_bytes());
    data[8..16].copy_from_slice(&mono_ns().to_le_bytes());
}

pub(crate) fn read_header(data: &[u8]) -> Option<(u32, u64)> {
    if data.len() < 16 || data[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    Some((
        u32::from_le_bytes(data[4..8].try_into().unwrap()),
        u64::from_le_bytes(data[8..16].try_into().unwrap()),
    ))
}

pub(crate) fn json_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
