//! The counting global allocator: heap allocations per frame in each process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Counts every allocation (and reallocation) of the process, on any thread, except on a
/// thread that marked itself uncounted (the bench's own bookkeeping).
struct CountingAlloc;

pub(crate) static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// In a child: the counter in the shared page the parent reads.
pub(crate) static SHARED_ALLOCS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count_alloc() {
    if UNCOUNTED.try_with(|u| u.get()).unwrap_or(false) {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let shared = SHARED_ALLOCS.load(Ordering::Relaxed);
    if !shared.is_null() {
        // SAFETY: set once to an AtomicU64 inside a mapping that is never unmapped.
        unsafe { (*shared).fetch_add(1, Ordering::Relaxed) };
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; counting
// touches only atomics and a const-initialized thread local, and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which System shares.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` without counting this thread's allocations.
pub(crate) fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    UNCOUNTED.with(|u| u.set(true));
    let r = f();
    UNCOUNTED.with(|u| u.set(false));
    r
}
