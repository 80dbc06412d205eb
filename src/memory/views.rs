//! Recycled memories for registered files, so that a frame that reuses a producer's pool
//! buffer costs the consumer no allocation: neither a GstMemory nor GStreamer's per-object
//! bookkeeping (qdata, parent list), both of which a fresh memory needs on every frame.
//!
//! A view is one window (offset, size) of a registered file, wrapped as a GstMemory of its
//! own. It does not close the fd (the file's [`FileFd`] owns it) and keeps its mapping while
//! it lives. Its mini-object dispose hook puts it back in its file's [`ViewPool`] when the
//! last reference goes, the way GstBufferPool recycles buffers, and then gives back the
//! frame's release token; the next frame with the same window takes it from there.
//!
//! A view is a memory of its own, not a share of a base memory: a share that downstream
//! makes of it keeps it (and so the frame's release) alive. GstFdAllocator's share of a
//! share would point at the base instead, and the producer would be told too early.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use glib::translate::IntoGlib;

use super::release::{ReleaseToken, Slot};
use gst::glib;

/// A registered file's fd, closed when the file is retired and no view uses it any more.
#[derive(Debug)]
pub struct FileFd(OwnedFd);

impl FileFd {
    pub fn new(fd: OwnedFd) -> Arc<FileFd> {
        Arc::new(FileFd(fd))
    }
}

/// The views of one registered file that no frame uses now.
#[derive(Debug)]
pub struct ViewPool {
    inner: Mutex<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    idle: Vec<IdleView>,
    /// The file is retired: views coming back are freed instead.
    closed: bool,
}

#[derive(Debug)]
struct IdleView {
    mem: gst::Memory,
    state: NonNull<ViewState>,
}

// SAFETY: `state` points into the qdata of `mem`, which the IdleView owns; ViewState is Sync.
unsafe impl Send for IdleView {}

/// What a view's qdata keeps.
struct ViewState {
    pool: Arc<ViewPool>,
    /// Keeps the fd open while the view lives.
    _fd: Arc<FileFd>,
    offset: usize,
    size: usize,
    flags: u32,
    /// The release slot of the frame that uses the view now (null: none).
    slot: AtomicPtr<Slot>,
}

static VIEW_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("fdlink-recycled-view"));

/// Idle views a file keeps at most (a file is usually used through one or two windows).
const MAX_IDLE_VIEWS: usize = 8;

impl ViewPool {
    pub fn new() -> Arc<ViewPool> {
        Arc::new(ViewPool {
            inner: Mutex::new(PoolInner {
                // Never grows: a view coming back to a full list is freed.
                idle: Vec::with_capacity(MAX_IDLE_VIEWS),
                closed: false,
            }),
        })
    }

    /// Frees the idle views and stops taking views back: the file is retired.
    pub fn close(&self) {
        let idle = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.closed = true;
            std::mem::take(&mut inner.idle)
        };
        // Outside the lock: each view's dispose takes it.
        drop(idle);
    }

    /// Idle views (tests).
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.inner.lock().unwrap().idle.len()
    }

    /// A view of `offset..offset + size` of `fd` for one frame, holding `token`: an idle one
    /// of that window, or a new one made by `wrap` (the file's whole size, not closing the
    /// fd). Read-only.
    pub fn take(
        self: &Arc<Self>,
        fd: &Arc<FileFd>,
        offset: usize,
        size: usize,
        token: Option<&ReleaseToken>,
        wrap: impl FnOnce(std::os::fd::RawFd) -> Option<gst::Memory>,
    ) -> Option<gst::Memory> {
        let idle = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: an idle view's state lives as long as its memory, which the list holds.
            let at = inner.idle.iter().position(|v| unsafe {
                let s = v.state.as_ref();
                s.offset == offset && s.size == size
            });
            at.map(|i| inner.idle.swap_remove(i))
        };
        let (mem, state) = match idle {
            Some(v) => (v.mem, v.state),
            None => self.new_view(fd, offset, size, wrap)?,
        };
        if let Some(token) = token {
            // SAFETY: the state lives while `mem` does; the view is ours alone now.
            unsafe { state.as_ref() }
                .slot
                .store(token.hold(), Ordering::Relaxed);
        }
        Some(mem)
    }

    fn new_view(
        self: &Arc<Self>,
        fd: &Arc<FileFd>,
        offset: usize,
        size: usize,
        wrap: impl FnOnce(std::os::fd::RawFd) -> Option<gst::Memory>,
    ) -> Option<(gst::Memory, NonNull<ViewState>)> {
        let mut mem = wrap(fd.0.as_raw_fd())?;
        let mref = mem.get_mut()?;
        mref.resize(offset..offset + size);
        let obj = mref.as_mut_ptr() as *mut gst::ffi::GstMiniObject;
        // SAFETY: the memory is fresh and ours alone: setting a flag, the dispose hook and
        // qdata before anyone else sees it. The qdata owns the state and frees it through
        // drop_view_state when the memory is finally freed.
        let state = unsafe {
            (*obj).flags |= gst::ffi::GST_MEMORY_FLAG_READONLY;
            let state = Box::into_raw(Box::new(ViewState {
                pool: self.clone(),
                _fd: fd.clone(),
                offset,
                size,
                flags: (*obj).flags,
                slot: AtomicPtr::new(std::ptr::null_mut()),
            }));
            gst::ffi::gst_mini_object_set_qdata(
                obj,
                VIEW_QUARK.into_glib(),
                state as glib::ffi::gpointer,
                Some(drop_view_state),
            );
            (*obj).dispose = Some(recycle_view);
            NonNull::new_unchecked(state)
        };
        Some((mem, state))
    }
}

unsafe extern "C" fn drop_view_state(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the ViewState leaked in new_view; GStreamer frees qdata once.
    let state = unsafe { Box::from_raw(data as *mut ViewState) };
    let slot = state.slot.swap(std::ptr::null_mut(), Ordering::Acquire);
    if !slot.is_null() {
        // SAFETY: the view owned this reference to the frame's slot.
        unsafe { Slot::unref(slot) };
    }
}

/// The view's last reference is gone: back to its pool (FALSE: do not free it) unless the
/// file is retired; then the frame's release.
unsafe extern "C" fn recycle_view(obj: *mut gst::ffi::GstMiniObject) -> glib::ffi::gboolean {
    // SAFETY: only views get this hook, and a view's qdata holds its state until it is freed,
    // which is after this returns.
    let state = unsafe {
        gst::ffi::gst_mini_object_get_qdata(obj, VIEW_QUARK.into_glib()) as *const ViewState
    };
    let Some(state) = NonNull::new(state as *mut ViewState) else {
        return glib::ffi::GTRUE;
    };
    // SAFETY: as above.
    let s = unsafe { state.as_ref() };
    let slot = s.slot.swap(std::ptr::null_mut(), Ordering::Acquire);
    let recycled = {
        let mut inner = s.pool.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.closed || inner.idle.len() >= MAX_IDLE_VIEWS {
            false
        } else {
            // SAFETY: the refcount is 0 and nothing else can reach the memory: taking a
            // reference resurrects it (GstBufferPool does the same with buffers), and
            // putting back its window and flags undoes what downstream may have changed.
            let mem = unsafe {
                let m = obj as *mut gst::ffi::GstMemory;
                (*m).offset = s.offset as _;
                (*m).size = s.size as _;
                (*obj).flags = s.flags;
                gst::ffi::gst_mini_object_ref(obj);
                gst::Memory::from_glib_full(m)
            };
            inner.idle.push(IdleView { mem, state });
            true
        }
    };
    // After the view is back: the producer may reuse the buffer once it has the release.
    if !slot.is_null() {
        // SAFETY: the view owned this reference to the frame's slot.
        unsafe { Slot::unref(slot) };
    }
    if recycled {
        glib::ffi::GFALSE
    } else {
        glib::ffi::GTRUE
    }
}
