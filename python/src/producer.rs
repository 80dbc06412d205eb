//! `fdlink.Producer`: frames from Python to fdlink consumers (`fdlinksrc` elements and
//! applications), each copied once into a sealed memfd of the producer's pool.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use fdlink::producer::{self as link, ProducerOptions, Timing};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::Error;

/// GST_BUFFER_FLAG_DELTA_UNIT.
const FLAG_DELTA_UNIT: u32 = 1 << 13;

/// Serves frames on `path` to any number of fdlink consumers, with the caps `caps` (GStreamer's
/// caps text, e.g. "video/x-raw, format=(string)GRAY8, width=(int)64, height=(int)48,
/// framerate=(fraction)30/1"). `publish(data, pts=...)` copies a bytes-like object once into a
/// memfd consumers map read-only, and returns how many consumers were given it; the memfd is
/// reused once they all released it. `live`: frames are never waited for (a consumer at its
/// limit skips them); otherwise a slow consumer is waited for, 1 s at most. Only this user (and
/// root) may connect.
#[pyclass(module = "fdlink", name = "Producer")]
pub struct Producer {
    inner: Mutex<Option<link::Producer>>,
}

impl Producer {
    fn with<T>(&self, f: impl FnOnce(&mut link::Producer) -> T) -> PyResult<T> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let producer = guard
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("the producer is closed"))?;
        Ok(f(producer))
    }
}

fn nanos(ns: Option<u64>) -> Option<Duration> {
    ns.map(Duration::from_nanos)
}

#[pymethods]
impl Producer {
    #[new]
    #[pyo3(signature = (path, caps, *, live = false, max_held = 8))]
    fn new(path: PathBuf, caps: &str, live: bool, max_held: u32) -> PyResult<Self> {
        let options = ProducerOptions {
            live,
            max_held: max_held.max(1),
            max_held_total: max_held.max(1) * 2,
            ..ProducerOptions::default()
        };
        let mut producer =
            link::Producer::bind(&path, options).map_err(|e| Error::new_err(e.to_string()))?;
        producer.set_caps(caps);
        Ok(Producer {
            inner: Mutex::new(Some(producer)),
        })
    }

    /// Publishes the bytes of `data` (anything with the buffer protocol, C-contiguous: bytes,
    /// bytearray, memoryview, a numpy array) as one frame, at `pts` for `duration`
    /// (nanoseconds, None: unset); `keyframe=False` marks a delta unit. Copies it once, with
    /// the GIL held; waits for consumers (those in their handshake, a slow one when not live)
    /// without it. Returns how many consumers were given the frame.
    #[pyo3(signature = (data, *, pts = None, duration = None, keyframe = true))]
    fn publish(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        pts: Option<u64>,
        duration: Option<u64>,
        keyframe: bool,
    ) -> PyResult<usize> {
        let buffer = PyBuffer::<u8>::get(data)?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err("publish needs C-contiguous bytes"));
        }
        // SAFETY: the buffer is C-contiguous, `len_bytes` long, and held (with the GIL) until
        // the copy into the memfd below is done.
        let bytes = unsafe {
            std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes())
        };
        let timing = Timing {
            pts: nanos(pts),
            dts: None,
            duration: nanos(duration),
        };
        let flags = if keyframe { 0 } else { FLAG_DELTA_UNIT };
        let prepared = self
            .with(|p| p.prepare_bytes(bytes, timing))?
            .map_err(|e| Error::new_err(e.to_string()))?
            .flags(flags);
        drop(buffer);
        py.detach(|| self.with(|p| p.publish_prepared(prepared)))?
            .map_err(|e| Error::new_err(e.to_string()))
    }

    /// Waits up to `timeout` seconds for a consumer (without the GIL); whether one is there.
    #[pyo3(signature = (timeout = 10.0))]
    fn wait_for_consumer(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.detach(|| self.with(|p| p.wait_for_consumer(timeout)))
    }

    /// Ends the stream: consumers get the end of stream after every frame before it.
    fn end_of_stream(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.with(|p| p.end_of_stream()))
    }

    /// fdlinksink's counters: frames-sent, releases, consumers, buffers-held, ...
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (s, consumers, held) = self.with(|p| p.stats())?;
        let d = PyDict::new(py);
        d.set_item("frames-in", s.frames_in)?;
        d.set_item("frames-sent", s.frames_sent)?;
        d.set_item("frames-zero-copy", s.frames_zero_copy)?;
        d.set_item("frames-copied", s.frames_copied)?;
        d.set_item("frames-dropped", s.frames_dropped)?;
        d.set_item("frames-without-consumer", s.frames_without_consumer)?;
        d.set_item("releases", s.releases)?;
        d.set_item("consumers", consumers)?;
        d.set_item("buffers-held", held)?;
        Ok(d)
    }

    /// Stops serving: consumers see the connection close (send `end_of_stream()` first for
    /// an orderly end); the socket file is removed.
    fn close(&self, py: Python<'_>) {
        let producer = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(|| drop(producer));
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}
