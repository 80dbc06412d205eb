//! The criterion groups: handoff (one-way, round trip), throughput, fanout.

use criterion::{Criterion, Throughput};

use crate::frames::{Kind, SIZES};
use crate::producers::{Setup, Spec, setup};
use crate::shared::Shared;

pub(crate) const KINDS: [Kind; 8] = [
    Kind::Raw,
    Kind::RawUring,
    Kind::Memfd,
    Kind::MemfdFdEachFrame,
    Kind::DmabufStandin,
    Kind::DmabufHeap,
    Kind::Udmabuf,
    Kind::Copy,
];
/// Frames in flight in the throughput groups (max-held; pools hold one more).
pub(crate) const WINDOW: u32 = 4;

pub(crate) fn handoff(c: &mut Criterion, shared: &Shared) {
    for (label, w, h) in SIZES {
        let mut g = c.benchmark_group(format!("handoff-{label}"));
        for kind in KINDS.into_iter().filter(|k| k.runs_here()) {
            // Made on first use (so a criterion filter that skips it spawns nothing), shared by
            // the two benches, torn down after them.
            let spec = Spec {
                group: label,
                kind,
                size: (w, h),
                consumers: 1,
                window: 1,
            };
            let mut s: Option<Setup> = None;
            g.bench_function(format!("{}/oneway", kind.label()), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.oneway(n))
            });
            g.bench_function(format!("{}/roundtrip", kind.label()), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.roundtrip(n))
            });
            drop(s);
        }
        g.finish();
    }
}

pub(crate) fn throughput(c: &mut Criterion, shared: &Shared) {
    for (label, w, h) in SIZES {
        let mut g = c.benchmark_group(format!("throughput-{label}"));
        g.throughput(Throughput::Elements(1));
        for kind in KINDS.into_iter().filter(|k| k.runs_here()) {
            let spec = Spec {
                group: label,
                kind,
                size: (w, h),
                consumers: 1,
                window: WINDOW,
            };
            let mut s: Option<Setup> = None;
            g.bench_function(kind.label(), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.throughput(n))
            });
            drop(s);
        }
        g.finish();
    }
}

pub(crate) fn fanout(c: &mut Criterion, shared: &Shared) {
    let mut g = c.benchmark_group("fanout-1080p");
    for kind in [Kind::Raw, Kind::RawUring, Kind::Memfd] {
        for k in [1usize, 2, 4, 8] {
            let spec = Spec {
                group: "fanout-1080p",
                kind,
                size: (1920, 1080),
                consumers: k,
                window: 1,
            };
            let mut s: Option<Setup> = None;
            g.bench_function(format!("{}/{k}-consumers", kind.label()), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.roundtrip(n))
            });
            drop(s);
        }
    }
    g.finish();
}
