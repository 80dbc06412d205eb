//! Accounting: CPU time and allocations in both processes, the per-row summary records.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

use crate::alloc_count::{ALLOCS, uncounted};
use crate::children::pin_cpus;
use crate::frames::Kind;
use crate::shared::{CHILD_ENV, Region, Shared};

#[derive(Default, Clone, Copy)]
pub(crate) struct Acc {
    pub(crate) frames: u64,
    pub(crate) wall_ns: u64,
    pub(crate) cpu_self_ns: u64,
    pub(crate) cpu_child_ns: u64,
    pub(crate) allocs_self: u64,
    pub(crate) allocs_child: u64,
}

pub(crate) struct Snap {
    pub(crate) wall: Instant,
    cpu_self: u64,
    cpu_child: u64,
    allocs_self: u64,
    allocs_child: u64,
}

fn clock_ns(id: ClockId) -> u64 {
    clock_gettime(id).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

pub(crate) struct Children {
    pub(crate) procs: Vec<Child>,
    clocks: Vec<ClockId>,
    pub(crate) regions: &'static [Region],
}

impl Children {
    pub(crate) fn spawn(mode: &str, socket: &Path, shared: &Shared, k: usize) -> Children {
        let exe = std::env::current_exe().unwrap();
        let mut procs = Vec::new();
        let mut clocks = Vec::new();
        for i in 0..k {
            shared.regions[i].reset();
            let mut cmd = Command::new(&exe);
            if let Some((_, cpu)) = pin_cpus() {
                cmd.env("FDLINK_BENCH_CHILD_CPU", cpu.to_string());
            }
            let child = cmd
                .env(CHILD_ENV, mode)
                .env("FDLINK_BENCH_SOCKET", socket)
                .env("FDLINK_BENCH_SHM", &shared.path)
                .env("FDLINK_BENCH_REGION", i.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn consumer");
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            clocks.push(nix::time::clock_getcpuclockid(pid).expect("child cpu clock"));
            procs.push(child);
        }
        Children {
            procs,
            clocks,
            regions: &shared.regions[..k],
        }
    }

    fn cpu_ns(&self) -> u64 {
        self.clocks.iter().map(|c| clock_ns(*c)).sum()
    }

    fn allocs(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.allocs.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every consumer has seen frame `seq`.
    pub(crate) fn all_saw(&self, seq: u64) -> bool {
        self.regions
            .iter()
            .all(|r| r.last_seq.load(Ordering::Acquire) > seq)
    }

    pub(crate) fn snap(&self) -> Snap {
        Snap {
            wall: Instant::now(),
            cpu_self: clock_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID),
            cpu_child: self.cpu_ns(),
            allocs_self: ALLOCS.load(Ordering::Relaxed),
            allocs_child: self.allocs(),
        }
    }

    pub(crate) fn add(&self, acc: &mut Acc, start: Snap, frames: u64) {
        let end = self.snap();
        acc.frames += frames;
        acc.wall_ns += (end.wall - start.wall).as_nanos() as u64;
        acc.cpu_self_ns += end.cpu_self - start.cpu_self;
        acc.cpu_child_ns += end.cpu_child.saturating_sub(start.cpu_child);
        acc.allocs_self += end.allocs_self - start.allocs_self;
        acc.allocs_child += end.allocs_child - start.allocs_child;
    }

    pub(crate) fn wait(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for c in &mut self.procs {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        eprintln!("bench consumer {} did not exit; killing it", c.id());
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// What one (group, path, consumers) produced, for the summary.
#[derive(Default)]
pub(crate) struct Row {
    pub(crate) oneway_ns: Vec<u64>,
    pub(crate) roundtrip: Acc,
    pub(crate) throughput: Acc,
    pub(crate) notes: Vec<String>,
    /// fdlinksink's `frames-copied` and `copy-time-us` (the copy fallback's own copies).
    pub(crate) copies: u64,
    pub(crate) copy_us: u64,
    /// `memcpy_us` of one frame, taken as soon as this copy path's producer is done: the
    /// reference it is read against, on the machine as it was then.
    pub(crate) memcpy_us: Vec<f64>,
}

pub(crate) static SUMMARY: Mutex<BTreeMap<(String, Kind, usize), Row>> =
    Mutex::new(BTreeMap::new());

pub(crate) fn with_row(group: &str, kind: Kind, k: usize, f: impl FnOnce(&mut Row)) {
    uncounted(|| {
        let mut s = SUMMARY.lock().unwrap();
        f(s.entry((group.to_string(), kind, k)).or_default());
    })
}

/// Sleep-polls `done` (the producer is not timing anything meanwhile).
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(10));
    }
}
