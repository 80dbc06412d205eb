//! `fdlink` for Python: frames from an fdlink producer (a GStreamer `fdlinksink` in another
//! process) as objects that expose the producer's memfd or dmabuf through the buffer protocol,
//! read-only and without a copy; and a producer whose frames fdlink consumers take.
//!
//! ```python
//! import fdlink, numpy
//! for frame in fdlink.Consumer("/tmp/fdlink.sock"):
//!     with frame:
//!         pixels = numpy.asarray(frame)  # a view of the producer's memory
//! ```

mod consumer;
mod frame;
mod producer;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use fdlink::consumer::ConsumerError;

create_exception!(
    fdlink,
    Error,
    PyException,
    "The link failed; the consumer is done (connect again)."
);
create_exception!(
    fdlink,
    ConnectError,
    Error,
    "No producer listens at the path (or no permission to connect)."
);
create_exception!(
    fdlink,
    HandshakeError,
    Error,
    "The producer's hello failed, or its protocol version is not this module's."
);
create_exception!(
    fdlink,
    PeerGone,
    Error,
    "The producer closed the connection without an end of stream."
);
create_exception!(
    fdlink,
    PeerError,
    Error,
    "The producer ended the link with an error, which the message gives."
);
create_exception!(
    fdlink,
    ProtocolError,
    Error,
    "The producer sent a packet or a frame that does not check out; it was told why."
);

/// The Python exception for a consumer error: its class says what happened, its message why.
pub(crate) fn consumer_error(e: ConsumerError) -> PyErr {
    let msg = e.to_string();
    match e {
        ConsumerError::Connect { .. } => ConnectError::new_err(msg),
        ConsumerError::Handshake(_) => HandshakeError::new_err(msg),
        ConsumerError::PeerGone => PeerGone::new_err(msg),
        ConsumerError::PeerError(_) => PeerError::new_err(msg),
        ConsumerError::BadPacket(_) | ConsumerError::BadFrame(_) => ProtocolError::new_err(msg),
        ConsumerError::Transport(_) => Error::new_err(msg),
    }
}

#[pymodule]
#[pyo3(name = "fdlink")]
fn fdlink_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<consumer::Consumer>()?;
    m.add_class::<frame::Frame>()?;
    m.add_class::<producer::Producer>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("HandshakeError", py.get_type::<HandshakeError>())?;
    m.add("PeerGone", py.get_type::<PeerGone>())?;
    m.add("PeerError", py.get_type::<PeerError>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("FLAG_DISCONT", fdlink::consumer::FLAG_DISCONT)?;
    m.add("FLAG_DELTA_UNIT", fdlink::consumer::FLAG_DELTA_UNIT)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
