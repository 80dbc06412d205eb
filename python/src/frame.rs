//! `fdlink.Frame`: one frame from the producer, its bytes exposed through the buffer protocol.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use fdlink::consumer::{self as link, MappedFrame};
use fdlink::protocol::{MemoryKind, VideoLayout};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// The frame's bytes once mapped.
enum Bytes {
    /// No or one memory: its read-only mapping of the producer's file, given out as is.
    Mapped(MappedFrame),
    /// Several memories: their bytes in order, copied once into one block.
    Joined(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m.memories().next().unwrap_or(&[]),
            Bytes::Joined(v) => v,
        }
    }
}

/// What keeps the producer's buffer: dropped on release.
struct Held {
    frame: link::Frame,
    bytes: Option<Bytes>,
}

/// A frame from the producer, which keeps its buffer until the frame is released: by `with`,
/// by `release()`, or when the last reference to it goes (`del`). Its metadata stays readable
/// after the release; its bytes do not.
///
/// The frame's bytes, in order over all its memories as `gst_buffer_extract` gives them:
/// `bytes(frame)` copies them; `memoryview(frame)` and `numpy.asarray(frame)` (a 1-D uint8
/// array) read them in place through the buffer protocol, read-only. A frame of one memory
/// (what fdlinksink's pool makes) is mapped from the producer's memfd or dmabuf and nothing is
/// copied (`zero_copy` is True); a frame of several memories is copied once into one block,
/// the first time its bytes are asked for. Views and arrays made before the release stay
/// valid: the buffer goes back to the producer once the last of them is gone.
#[pyclass(module = "fdlink", name = "Frame")]
pub struct Frame {
    caps: String,
    pts: Option<Duration>,
    dts: Option<Duration>,
    duration: Option<Duration>,
    flags: u32,
    video: Option<VideoLayout>,
    memories: Vec<(MemoryKind, u64, u64)>,
    len: usize,
    held: Option<Held>,
    /// Buffer-protocol views alive (memoryviews, arrays): they keep `held`.
    exports: usize,
    /// `release()` ran: no new view, and `held` goes with the last view.
    release_asked: bool,
}

impl Frame {
    pub(crate) fn new(frame: link::Frame) -> Frame {
        let memories: Vec<_> = frame
            .memories()
            .iter()
            .map(|m| (m.kind, m.offset, m.size))
            .collect();
        Frame {
            caps: frame.caps().to_owned(),
            pts: frame.pts(),
            dts: frame.dts(),
            duration: frame.duration(),
            flags: frame.flags(),
            video: frame.video().copied(),
            len: memories.iter().map(|&(_, _, size)| size as usize).sum(),
            memories,
            held: Some(Held { frame, bytes: None }),
            exports: 0,
            release_asked: false,
        }
    }

    /// The frame's bytes, mapped on first use.
    fn data(&mut self) -> PyResult<&[u8]> {
        let held = match &mut self.held {
            Some(held) if !self.release_asked => held,
            _ => {
                return Err(PyValueError::new_err(
                    "the frame was released: read its bytes before release() or the end of `with`",
                ));
            }
        };
        if held.bytes.is_none() {
            let mapped = held.frame.map()?;
            held.bytes = Some(if held.frame.memories().len() <= 1 {
                Bytes::Mapped(mapped)
            } else {
                Bytes::Joined(mapped.bytes().into_owned())
            });
        }
        Ok(held.bytes.as_ref().map_or(&[], Bytes::as_slice))
    }

    /// A field of the caps' first structure (`format`, `width`, ...), without its type.
    fn caps_field(&self, name: &str) -> Option<&str> {
        let structure = self.caps.split(';').next()?;
        structure.split(',').skip(1).find_map(|field| {
            let (key, value) = field.trim().split_once('=')?;
            if key.trim() != name {
                return None;
            }
            let value = value.trim();
            let value = match value.strip_prefix('(') {
                Some(typed) => typed.split_once(')')?.1.trim(),
                None => value,
            };
            Some(value.trim_matches('"'))
        })
    }
}

fn nanos(t: Option<Duration>) -> Option<u64> {
    t.map(|d| d.as_nanos() as u64)
}

#[pymethods]
impl Frame {
    /// A copy of the frame's bytes.
    fn __bytes__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, self.data()?))
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// The buffer protocol: a read-only, 1-D view of unsigned bytes (format "B").
    ///
    /// # Safety
    ///
    /// `view` is the Py_buffer the interpreter asks this object to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "a frame is read-only (the producer's memory): copy it with bytearray(frame) \
                 or numpy.array(frame) to write",
            ));
        }
        let (buf, len) = {
            let mut this = slf.borrow_mut();
            let data = this.data()?;
            let got = (data.as_ptr(), data.len());
            this.exports += 1;
            got
        };
        // SAFETY: `view` is the interpreter's Py_buffer for this call. The bytes stay where they
        // are while `exports` counts this view: `release()` refuses to drop them, and the frame
        // itself lives as long as `obj`, the strong reference the view holds. The format is a
        // static string the interpreter only reads; shape and strides point into the view.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = buf.cast::<c_void>().cast_mut();
            (*view).len = len as ffi::Py_ssize_t;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &raw mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &raw mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    ///
    /// `_view` is a Py_buffer `__getbuffer__` filled; nothing in it is ours to free.
    unsafe fn __releasebuffer__(&mut self, _view: *mut ffi::Py_buffer) {
        self.exports = self.exports.saturating_sub(1);
        if self.exports == 0 && self.release_asked {
            self.held = None;
        }
    }

    /// Gives the buffer back to the producer: now, or, while memoryviews or arrays made of the
    /// frame are alive, once the last of them is gone (they read the producer's memory). The
    /// frame's bytes are no longer given out. Releasing twice does nothing.
    fn release(&mut self) {
        self.release_asked = true;
        if self.exports == 0 {
            self.held = None;
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.release();
        false
    }

    /// True once the frame was released (its buffer goes back with its last view).
    #[getter]
    fn released(&self) -> bool {
        self.release_asked
    }

    /// True while the producer's buffer is kept: before the release, and after it while
    /// views of the frame are alive.
    #[getter]
    fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// True when the buffer protocol gives the producer's memory itself (no or one memory);
    /// False when several memories are copied into one block.
    #[getter]
    fn zero_copy(&self) -> bool {
        self.memories.len() <= 1
    }

    /// The stream's caps when the frame was sent (GStreamer's caps text).
    #[getter]
    fn caps(&self) -> &str {
        &self.caps
    }

    /// Presentation time in the producer's segment, in nanoseconds; None if it has none.
    #[getter]
    fn pts(&self) -> Option<u64> {
        nanos(self.pts)
    }

    /// Decoding time in nanoseconds, or None.
    #[getter]
    fn dts(&self) -> Option<u64> {
        nanos(self.dts)
    }

    /// Duration in nanoseconds, or None.
    #[getter]
    fn duration(&self) -> Option<u64> {
        nanos(self.duration)
    }

    /// GstBufferFlags bits (`fdlink.FLAG_DISCONT`, `fdlink.FLAG_DELTA_UNIT`, ...).
    #[getter]
    fn flags(&self) -> u32 {
        self.flags
    }

    /// True unless the producer marked the frame a delta unit.
    #[getter]
    fn is_keyframe(&self) -> bool {
        self.flags & link::FLAG_DELTA_UNIT == 0
    }

    /// Width in pixels, from the video layout or the caps; None if neither says.
    #[getter]
    fn width(&self) -> Option<u32> {
        self.video
            .map(|v| v.width)
            .or_else(|| self.caps_field("width")?.parse().ok())
    }

    /// Height in pixels, from the video layout or the caps; None if neither says.
    #[getter]
    fn height(&self) -> Option<u32> {
        self.video
            .map(|v| v.height)
            .or_else(|| self.caps_field("height")?.parse().ok())
    }

    /// The caps' format (`"NV12"`, `"I420"`, `"S16LE"`, ...), or None.
    #[getter]
    fn format(&self) -> Option<&str> {
        self.caps_field("format")
    }

    /// Each plane's (offset, stride) in bytes, across the frame's bytes, from the producer's
    /// video layout; empty when it sent none.
    #[getter]
    fn planes(&self) -> Vec<(u64, i32)> {
        self.video.map_or_else(Vec::new, |v| {
            let n = (v.n_planes as usize).min(v.offsets.len());
            v.offsets[..n]
                .iter()
                .copied()
                .zip(v.strides[..n].iter().copied())
                .collect()
        })
    }

    /// Each memory's (kind, offset in its file, size): kind is "memfd" or "dmabuf".
    #[getter]
    fn memories(&self) -> Vec<(&'static str, u64, u64)> {
        self.memories
            .iter()
            .map(|&(kind, offset, size)| {
                let kind = match kind {
                    MemoryKind::Memfd => "memfd",
                    MemoryKind::DmaBuf => "dmabuf",
                };
                (kind, offset, size)
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        let pts = self.pts.map_or("none".to_owned(), |d| format!("{d:?}"));
        let state = match (self.release_asked, self.held.is_some()) {
            (false, _) => "",
            (true, true) => ", released (kept by its views)",
            (true, false) => ", released",
        };
        format!(
            "<fdlink.Frame {} bytes in {} memories, pts {pts}{state}>",
            self.len,
            self.memories.len()
        )
    }
}
