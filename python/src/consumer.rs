//! `fdlink.Consumer`: a connection to a producer, iterated for its frames.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fdlink::consumer::{self as link, Poll};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::consumer_error;
use crate::frame::Frame;

/// How long a blocking wait runs without the GIL before it looks for signals (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A connection to the fdlink producer listening on `path` (an `fdlinksink socket-path=...`).
/// Iterating it yields each `Frame` in the producer's order and stops at the end of the
/// stream. The producer keeps each frame's buffer until the `Frame` is released (`with`,
/// `release()`, or its last reference going); it lets a consumer hold `hold_limit` of them.
/// Waits release the GIL. Errors are `fdlink.Error` subclasses: `ConnectError`,
/// `HandshakeError`, `PeerGone`, `PeerError`, `ProtocolError`.
#[pyclass(module = "fdlink", name = "Consumer")]
pub struct Consumer {
    inner: Option<link::Consumer>,
    ended: bool,
}

impl Consumer {
    fn link(&mut self) -> PyResult<&mut link::Consumer> {
        self.inner
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("the consumer is closed"))
    }

    /// The next frame within `timeout` (`None`: however long it takes), or `None` at the end
    /// of the stream or once the timeout passed. Signals are handled while it waits.
    fn wait(&mut self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<Frame>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let step = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK),
                None => SIGNAL_CHECK,
            };
            let link = self.link()?;
            match py.detach(|| link.poll_frame(Some(step))) {
                Ok(Poll::Frame(f)) => return Ok(Some(Frame::new(f))),
                Ok(Poll::Ended) => {
                    self.ended = true;
                    return Ok(None);
                }
                Ok(Poll::Pending) => {}
                Err(e) => return Err(consumer_error(e)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl Consumer {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Consumer> {
        let inner = py
            .detach(|| link::Consumer::connect(&path))
            .map_err(consumer_error)?;
        Ok(Consumer {
            inner: Some(inner),
            ended: false,
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next frame, waiting for it; StopIteration at the end of the stream.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Frame>> {
        self.wait(py, None)
    }

    /// The next frame if one comes within `timeout` seconds (`None`: wait as long as it
    /// takes), else `None`; `ended` tells whether the stream ended. With 0 it only looks at
    /// what is already there: for event loops, call it while `fileno()` is readable until it
    /// gives `None`.
    #[pyo3(signature = (timeout = Some(0.0)), text_signature = "($self, timeout=0.0)")]
    fn poll(&mut self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Frame>> {
        let Some(t) = timeout else {
            return self.wait(py, None);
        };
        let t = Duration::try_from_secs_f64(t)
            .map_err(|e| PyValueError::new_err(format!("timeout {t}: {e}")))?;
        if !t.is_zero() {
            return self.wait(py, Some(t));
        }
        match self.link()?.poll_frame(Some(Duration::ZERO)) {
            Ok(Poll::Frame(f)) => Ok(Some(Frame::new(f))),
            Ok(Poll::Ended) => {
                self.ended = true;
                Ok(None)
            }
            Ok(Poll::Pending) => Ok(None),
            Err(e) => Err(consumer_error(e)),
        }
    }

    /// Asks the producer's pipeline to seek to `position` (nanoseconds; a flushing, accurate
    /// seek in time): frames from there follow the ones already on their way.
    fn seek(&mut self, position: u64) -> PyResult<()> {
        self.link()?
            .seek(Duration::from_nanos(position))
            .map_err(consumer_error)
    }

    /// The socket's fd, readable when a packet is waiting (for select, poll, selectors).
    fn fileno(&mut self) -> PyResult<i32> {
        Ok(self.link()?.as_fd().as_raw_fd())
    }

    /// Closes the connection. Frames still alive keep the socket until they are released
    /// (their releases still reach the producer).
    fn close(&mut self) {
        self.inner = None;
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    /// The stream's caps now (GStreamer's caps text; empty before the first caps).
    #[getter]
    fn caps(&mut self) -> PyResult<String> {
        Ok(self.link()?.caps().to_owned())
    }

    /// How many frames the producer lets this consumer hold at once (0: no limit); holding
    /// that many makes it skip frames (live) or wait.
    #[getter]
    fn hold_limit(&mut self) -> PyResult<u32> {
        Ok(self.link()?.hold_limit())
    }

    /// True once the producer sent its end of stream.
    #[getter]
    fn ended(&self) -> bool {
        self.ended
    }

    /// True once `close()` ran.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    fn __repr__(&self) -> String {
        let state = match (&self.inner, self.ended) {
            (None, _) => "closed",
            (Some(_), true) => "ended",
            (Some(_), false) => "open",
        };
        format!("<fdlink.Consumer {state}>")
    }
}
