//! Telling the producer when a received frame's last memory is freed, without a heap
//! allocation per frame.
//!
//! Each connection has one [`ReleaseTokens`], which holds what a release does (send the
//! packet). A frame takes a slot from it: the slot counts the memories that hold it (through
//! their qdata) and the frame's [`ReleaseToken`] while it is imported. The last one to let go
//! runs the release for the frame's buffer id and puts the slot back on a spare list, which
//! the next frame takes it from.

use gst::glib;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, LazyLock, Mutex};

/// Spare slots a connection keeps; more frames in flight than this allocate their slot.
const SPARE_SLOTS: usize = 64;

/// Issues the release tokens of one connection's frames.
#[derive(Clone)]
pub struct ReleaseTokens {
    inner: Arc<Issuer>,
}

struct Issuer {
    /// Runs on whatever thread frees a frame's last memory, with the frame's buffer id.
    release: Box<dyn Fn(u64) + Send + Sync>,
    /// Frames issued a token and not released yet: the producer's buffers this consumer pins.
    outstanding: AtomicUsize,
    /// Slots whose frames are released; never grows past its initial capacity. Boxed: a slot
    /// in use is reached through a raw pointer, so it keeps its address.
    #[allow(clippy::vec_box)]
    spare: Mutex<Vec<Box<Slot>>>,
}

/// A frame's release slot (see the module docs).
pub(super) struct Slot {
    /// Memories holding the slot, plus one while the frame's `ReleaseToken` lives.
    refs: AtomicUsize,
    buffer_id: u64,
    /// The issuer while the slot is in use; a spare slot holds none, so that the issuer's
    /// spare list and its slots do not keep each other alive.
    issuer: Option<Arc<Issuer>>,
}

impl ReleaseTokens {
    /// `release` runs once per frame, when the last memory holding its token is freed.
    pub fn new(release: impl Fn(u64) + Send + Sync + 'static) -> ReleaseTokens {
        ReleaseTokens {
            inner: Arc::new(Issuer {
                release: Box::new(release),
                outstanding: AtomicUsize::new(0),
                spare: Mutex::new(Vec::with_capacity(SPARE_SLOTS)),
            }),
        }
    }

    /// A token for the frame `buffer_id`: its release runs when the token and every memory
    /// it is attached to are gone.
    pub fn issue(&self, buffer_id: u64) -> ReleaseToken {
        let spare = self
            .inner
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut slot = spare.unwrap_or_else(|| {
            Box::new(Slot {
                refs: AtomicUsize::new(0),
                buffer_id: 0,
                issuer: None,
            })
        });
        *slot.refs.get_mut() = 1;
        slot.buffer_id = buffer_id;
        self.inner.outstanding.fetch_add(1, Ordering::Relaxed);
        slot.issuer = Some(self.inner.clone());
        ReleaseToken {
            slot: NonNull::from(Box::leak(slot)),
        }
    }

    /// Frames issued a token whose release has not run yet.
    pub fn outstanding(&self) -> usize {
        self.inner.outstanding.load(Ordering::Relaxed)
    }

    /// Slots on the spare list (tests).
    #[cfg(test)]
    fn spare_slots(&self) -> usize {
        self.inner.spare.lock().unwrap().len()
    }
}

/// One frame's claim on its slot, held while the frame is imported: the release cannot run
/// before it is dropped, even when no memory takes the token (an import that fails).
pub struct ReleaseToken {
    slot: NonNull<Slot>,
}

impl Slot {
    /// Gives back one reference to the slot; the last runs the release and recycles it.
    ///
    /// # Safety
    /// `slot` came from [`ReleaseToken::hold`] (or the token itself) and the caller owns
    /// that reference.
    pub(super) unsafe fn unref(slot: *mut Slot) {
        // SAFETY: the caller's contract.
        unsafe { unref(slot) }
    }
}

impl ReleaseToken {
    /// One more reference to the frame's slot, for a holder other than qdata (a recycled
    /// view): give it back with [`Slot::unref`].
    pub(super) fn hold(&self) -> *mut Slot {
        // SAFETY: the slot is live while this token holds its reference.
        unsafe { self.slot.as_ref() }
            .refs
            .fetch_add(1, Ordering::Relaxed);
        self.slot.as_ptr()
    }

    /// Makes `mem` hold the token: the release waits for `mem` to be freed too.
    pub fn attach(&self, mem: &mut gst::MemoryRef) {
        use glib::translate::IntoGlib;
        let slot = self.hold();
        // SAFETY: `mem` is a valid memory we hold mutably. The qdata owns the reference taken
        // above and gives it back through `unref_slot` when the memory is freed (or the qdata
        // replaced).
        unsafe {
            gst::ffi::gst_mini_object_set_qdata(
                mem.as_mut_ptr() as *mut gst::ffi::GstMiniObject,
                RELEASE_QUARK.into_glib(),
                slot as glib::ffi::gpointer,
                Some(unref_slot),
            );
        }
    }
}

impl Drop for ReleaseToken {
    fn drop(&mut self) {
        // SAFETY: the token owns one reference to the slot, given back here once.
        unsafe { unref(self.slot.as_ptr()) };
    }
}

static RELEASE_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("fdlink-release-token"));

unsafe extern "C" fn unref_slot(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the slot a `ReleaseToken::attach` gave this memory with one reference,
    // and GStreamer calls the destroy notify once.
    unsafe { unref(data as *mut Slot) };
}

/// Gives back one reference to `slot`; the last runs the release and recycles the slot.
///
/// # Safety
/// `slot` came from `Box::leak` in `ReleaseTokens::issue` and the caller owns one of its
/// references.
unsafe fn unref(slot: *mut Slot) {
    // SAFETY: the caller's reference keeps the slot alive until this decrement.
    if unsafe { &*slot }.refs.fetch_sub(1, Ordering::Release) != 1 {
        return;
    }
    // Everything the other holders did before letting go happens before the release.
    fence(Ordering::Acquire);
    // SAFETY: that was the last reference: nothing else can reach the slot, so the box is
    // ours again.
    let mut slot = unsafe { Box::from_raw(slot) };
    let issuer = slot.issuer.take().expect("a slot in use knows its issuer");
    issuer.outstanding.fetch_sub(1, Ordering::Relaxed);
    (issuer.release)(slot.buffer_id);
    let mut spare = issuer.spare.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < spare.capacity() {
        spare.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fd_lock;
    use std::sync::atomic::AtomicU64;

    /// GStreamer, initialised under the fd lock: its first init opens the registry's files,
    /// which another test counting its fds would see.
    fn init() -> std::sync::MutexGuard<'static, ()> {
        let guard = fd_lock();
        gst::init().unwrap();
        guard
    }

    fn counting() -> (ReleaseTokens, Arc<Mutex<Vec<u64>>>) {
        let released = Arc::new(Mutex::new(Vec::new()));
        let log = released.clone();
        let tokens = ReleaseTokens::new(move |id| log.lock().unwrap().push(id));
        (tokens, released)
    }

    #[test]
    fn release_runs_once_after_the_token_and_every_memory() {
        let _init = init();
        let (tokens, released) = counting();
        let token = tokens.issue(7);
        let mut a = gst::Memory::with_size(16);
        let mut b = gst::Memory::with_size(16);
        token.attach(a.get_mut().unwrap());
        token.attach(b.get_mut().unwrap());
        drop(token);
        assert!(released.lock().unwrap().is_empty());
        assert_eq!(tokens.outstanding(), 1);
        let a2 = a.clone();
        drop(a);
        drop(b);
        assert!(released.lock().unwrap().is_empty(), "a2 still holds it");
        assert_eq!(tokens.outstanding(), 1);
        drop(a2);
        assert_eq!(*released.lock().unwrap(), vec![7]);
        assert_eq!(tokens.outstanding(), 0);
        assert_eq!(tokens.spare_slots(), 1);
    }

    #[test]
    fn a_token_no_memory_took_releases_when_dropped() {
        let (tokens, released) = counting();
        drop(tokens.issue(3));
        assert_eq!(*released.lock().unwrap(), vec![3]);
    }

    #[test]
    fn slots_are_reused_and_the_spare_list_is_bounded() {
        let _init = init();
        let (tokens, released) = counting();
        let first = tokens.issue(1);
        let addr = first.slot.as_ptr() as usize;
        drop(first);
        let second = tokens.issue(2);
        assert_eq!(
            second.slot.as_ptr() as usize,
            addr,
            "the spare slot is reused"
        );
        drop(second);
        // More frames in flight than the spare list keeps: each gets a slot, each is released,
        // and the surplus slots are freed rather than kept.
        let mut held = Vec::new();
        for id in 0..(SPARE_SLOTS as u64 + 10) {
            let token = tokens.issue(100 + id);
            let mut mem = gst::Memory::with_size(8);
            token.attach(mem.get_mut().unwrap());
            held.push(mem);
        }
        drop(held);
        assert_eq!(released.lock().unwrap().len(), 2 + SPARE_SLOTS + 10);
        assert_eq!(tokens.spare_slots(), SPARE_SLOTS);
    }

    #[test]
    fn memories_freed_on_other_threads_release_every_frame_once() {
        let _init = init();
        let count = Arc::new(AtomicU64::new(0));
        let sum = Arc::new(AtomicU64::new(0));
        let (c, s) = (count.clone(), sum.clone());
        let tokens = ReleaseTokens::new(move |id| {
            c.fetch_add(1, Ordering::Relaxed);
            s.fetch_add(id, Ordering::Relaxed);
        });
        let (tx, rx) = std::sync::mpsc::channel::<gst::Memory>();
        let freer = std::thread::spawn(move || {
            for mem in rx {
                drop(mem);
            }
        });
        for id in 1..=1000u64 {
            let token = tokens.issue(id);
            let mut mem = gst::Memory::with_size(8);
            token.attach(mem.get_mut().unwrap());
            let shared = mem.share(0..4);
            tx.send(mem).unwrap();
            drop(token);
            drop(shared);
        }
        drop(tx);
        freer.join().unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1000);
        assert_eq!(sum.load(Ordering::Relaxed), 1000 * 1001 / 2);
    }

    #[test]
    fn slots_outliving_their_tokens_keep_the_issuer() {
        let _init = init();
        let (tokens, released) = counting();
        let token = tokens.issue(9);
        let mut mem = gst::Memory::with_size(8);
        token.attach(mem.get_mut().unwrap());
        drop(token);
        drop(tokens);
        drop(mem);
        assert_eq!(*released.lock().unwrap(), vec![9]);
    }
}
