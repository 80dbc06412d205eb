//! A consumer for programs that are not GStreamer pipelines: connects to an `fdlinksink` (or
//! any fdlink producer), yields its frames in order as files (memfds, dmabufs) with their
//! windows, timestamps and layout, maps them read-only on request, and releases each to the
//! producer when the frame is dropped. It speaks the protocol fdlinksrc speaks and checks a
//! producer's packets and fds as strictly.
//!
//! ```no_run
//! let mut consumer = fdlink::consumer::Consumer::connect("/tmp/fdlink.sock".as_ref())?;
//! while let Some(frame) = consumer.next_frame()? {
//!     let mapped = frame.map()?;
//!     println!("{} bytes at pts {:?}", mapped.len(), frame.pts());
//! } // each frame goes back to the producer as it is dropped
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::{self, HandshakeError};
use crate::fdkind::{self, ImportError};
use crate::mapping::Mapping;
use crate::protocol::{
    self, BufferHeader, DecodeError, FD_REGISTERED, MAX_PACKET_SIZE, MemoryKind, Packet,
    QueryReplyPacket, TIME_NONE, VideoLayout,
};
use crate::transport::{Connection, TransportError};

mod file_maps;
#[cfg(test)]
mod tests;

use file_maps::{FileTable, RegisteredFile};

/// `GST_EVENT_EOS`: the wire code of an end-of-stream event.
const EVENT_EOS: u32 = 28174;
/// `GST_EVENT_SEEK`.
const EVENT_SEEK: u32 = 51201;

/// What went wrong with the link. After any of these the consumer is done: connect again.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The socket could not be reached (no producer there, or no permission).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: TransportError,
    },
    /// The hello failed: a protocol version mismatch names both versions.
    #[error("handshake with the producer failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The producer closed the connection without an end of stream.
    #[error("the producer closed the connection")]
    PeerGone,
    /// The producer sent an error packet before it closed.
    #[error("the producer ended the link: {0}")]
    PeerError(String),
    /// The producer sent a packet that does not decode; it was told why.
    #[error("bad packet from the producer: {0}")]
    BadPacket(#[from] DecodeError),
    /// The producer sent a frame whose files do not check out; it was told why.
    #[error("bad frame from the producer: {0}")]
    BadFrame(#[from] ImportError),
    /// Socket I/O failed.
    #[error("socket: {0}")]
    Transport(TransportError),
}

impl From<TransportError> for ConsumerError {
    fn from(e: TransportError) -> Self {
        if endpoint::peer_gone(&e) {
            ConsumerError::PeerGone
        } else {
            ConsumerError::Transport(e)
        }
    }
}

/// A connection to a producer. Frames come out in the producer's order; caps changes show in
/// each frame's [`Frame::caps`].
pub struct Consumer {
    conn: Arc<Connection>,
    buf: Vec<u8>,
    caps: Arc<str>,
    /// Files the producer registered, each with its shared mapping.
    registered: FileTable,
    /// Most frames the producer lets this consumer hold before it skips or waits.
    hold_limit: u32,
    ended: bool,
}

impl Consumer {
    /// Connects to the producer listening on `path` and exchanges hellos.
    pub fn connect(path: &Path) -> Result<Consumer, ConsumerError> {
        let conn = Connection::connect(path).map_err(|source| ConsumerError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Consumer::handshake(conn)
    }

    /// Takes a connected socket (one end of a socketpair, or an inherited fd) whose other end
    /// is a producer, and exchanges hellos.
    pub fn from_fd(fd: OwnedFd) -> Result<Consumer, ConsumerError> {
        Consumer::handshake(Connection::from_owned(fd)?)
    }

    fn handshake(conn: Connection) -> Result<Consumer, ConsumerError> {
        let producer = endpoint::consumer_hello(&conn, 0, None, endpoint::HELLO_TIMEOUT)?;
        Ok(Consumer {
            conn: Arc::new(conn),
            buf: vec![0; MAX_PACKET_SIZE],
            caps: Arc::from(""),
            registered: FileTable::default(),
            hold_limit: producer.hold_limit,
            ended: false,
        })
    }

    /// How many frames the producer lets this consumer hold (its `max-held`; 0: no limit).
    /// Holding that many makes it skip frames for this consumer (live) or wait (not live).
    pub fn hold_limit(&self) -> u32 {
        self.hold_limit
    }

    /// The caps of the stream now (empty before the first caps).
    pub fn caps(&self) -> &str {
        &self.caps
    }

    /// Asks the producer's pipeline to seek to `position` (a flushing, accurate seek in
    /// time); frames from there follow, after the ones already on their way.
    pub fn seek(&self, position: Duration) -> Result<(), ConsumerError> {
        let structure = format!(
            "GstEventSeek, rate=(gdouble)1, format=(GstFormat)time, \
             flags=(GstSeekFlags)GST_SEEK_FLAG_FLUSH+GST_SEEK_FLAG_ACCURATE, \
             cur-type=(GstSeekType)set, cur=(gint64){}, stop-type=(GstSeekType)none, \
             stop=(gint64)-1, trickmode-interval=(guint64)0",
            position.as_nanos()
        );
        self.send_upstream_event(EVENT_SEEK, &structure)
    }

    /// Sends the producer's pipeline an upstream event: `event_type` is the GstEventType
    /// value, `structure` its structure as GStreamer's text (a custom upstream event, 0x0401,
    /// with any structure the application's producer understands).
    pub fn send_upstream_event(
        &self,
        event_type: u32,
        structure: &str,
    ) -> Result<(), ConsumerError> {
        let packet = Packet::<BorrowedFd<'_>>::UpstreamEvent(protocol::EventPacket {
            event_type,
            seqnum: 0,
            structure: structure.to_owned(),
        });
        self.conn
            .send_packet(&packet, Some(endpoint::HELLO_TIMEOUT))
            .map_err(ConsumerError::from)
    }

    /// The next frame, waiting for it; `None` at the end of the stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ConsumerError> {
        loop {
            match self.poll_frame(None)? {
                Poll::Frame(f) => return Ok(Some(f)),
                Poll::Ended => return Ok(None),
                Poll::Pending => {}
            }
        }
    }

    /// The next frame if one comes within `timeout` (`Some(Duration::ZERO)`: only packets
    /// already here; `None`: wait as long as it takes). For event loops: poll [`Consumer::as_fd`]
    /// for reading, then call this with a zero timeout until it is pending.
    pub fn poll_frame(&mut self, timeout: Option<Duration>) -> Result<Poll, ConsumerError> {
        if self.ended {
            return Ok(Poll::Ended);
        }
        let got = match timeout {
            Some(Duration::ZERO) => match self.conn.try_recv(&mut self.buf) {
                Err(TransportError::WouldBlock) => return Ok(Poll::Pending),
                other => other?,
            },
            _ => match self.conn.recv_wait(&mut self.buf, None, timeout) {
                Ok(Some(got)) => got,
                Ok(None) | Err(TransportError::TimedOut(_)) => return Ok(Poll::Pending),
                Err(e) => return Err(e.into()),
            },
        };
        let packet = match Packet::decode(&self.buf[..got.len], got.fds) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(e.into())),
        };
        match packet {
            Packet::Caps(caps) => self.caps = Arc::from(caps),
            Packet::Event { event, .. } if event.event_type == EVENT_EOS => {
                self.ended = true;
                return Ok(Poll::Ended);
            }
            Packet::Buffer(header, fds) => {
                return match self.frame(header, fds) {
                    Ok(frame) => Ok(Poll::Frame(frame)),
                    Err(e) => Err(self.refuse(e.into())),
                };
            }
            Packet::Retire { file_ids } => {
                for id in file_ids {
                    if let Err(e) = self.registered.retire(id) {
                        return Err(self.refuse(e.into()));
                    }
                }
            }
            // This consumer answers no query: the producer's pipeline goes on without.
            Packet::Query(q) => {
                let reply = Packet::<BorrowedFd<'_>>::QueryReply(QueryReplyPacket {
                    id: q.id,
                    answered: false,
                    structure: String::new(),
                });
                self.conn
                    .send_packet(&reply, Some(endpoint::HELLO_TIMEOUT))?;
            }
            Packet::Error(msg) => return Err(ConsumerError::PeerError(msg)),
            // Other events, messages and state changes are the producer pipeline's own.
            _ => {}
        }
        Ok(Poll::Pending)
    }

    /// Tells the producer why its packet is refused, and ends the link.
    fn refuse(&mut self, e: ConsumerError) -> ConsumerError {
        self.conn.send_error(&format!("protocol error: {e}"));
        self.ended = true;
        e
    }

    fn frame(
        &mut self,
        header: BufferHeader,
        fds: protocol::PacketFds<OwnedFd>,
    ) -> Result<Frame, ImportError> {
        // Each packet fd checked against every window on it, and kept once.
        let mut files: Vec<Option<(Arc<OwnedFd>, u64)>> = vec![None; fds.len()];
        for (index, fd) in fds.into_iter().enumerate() {
            let Some(kind) = header
                .memories
                .iter()
                .find(|m| usize::from(m.fd_index) == index)
                .map(|m| m.kind)
            else {
                // Not a memory's: the metas memfd, which this consumer does not read.
                continue;
            };
            let windows = header
                .memories
                .iter()
                .filter(|m| usize::from(m.fd_index) == index)
                .map(|m| (m.offset, m.size));
            let size = fdkind::check_fd(index, fd.as_fd(), kind, windows)?;
            files[index] = Some((Arc::new(fd), size));
        }
        let mut memories = Vec::with_capacity(header.memories.len());
        for m in &header.memories {
            let file = if m.fd_index == FD_REGISTERED {
                let r = self.registered.get(m.file_id)?;
                if r.kind != m.kind {
                    return Err(ImportError::RegisteredKind {
                        id: m.file_id,
                        registered: r.kind,
                        sent: m.kind,
                    });
                }
                fdkind::check_windows(
                    usize::from(m.fd_index),
                    r.size,
                    [(m.offset, m.size)].into_iter(),
                )?;
                MemoryFile::Registered(r.clone())
            } else {
                let (fd, size) = files[usize::from(m.fd_index)]
                    .clone()
                    .expect("the decoder checks fd indices");
                match self.registered.get(m.file_id) {
                    _ if m.file_id == 0 => MemoryFile::Once { fd, size },
                    // Memories sharing the fd register it once; another fd under its id is
                    // refused.
                    Ok(r) if !Arc::ptr_eq(&r.fd, &fd) => {
                        return Err(ImportError::RegisteredTwice { id: m.file_id });
                    }
                    Ok(r) => MemoryFile::Registered(r.clone()),
                    Err(_) => MemoryFile::Registered(
                        self.registered
                            .insert(m.file_id, Arc::new(RegisteredFile::new(fd, m.kind, size)))?
                            .clone(),
                    ),
                }
            };
            memories.push(FrameMemory {
                kind: m.kind,
                file,
                offset: m.offset,
                size: m.size,
            });
        }
        Ok(Frame {
            conn: self.conn.clone(),
            buffer_id: header.buffer_id,
            caps: self.caps.clone(),
            pts: time(header.pts),
            dts: time(header.dts),
            duration: time(header.duration),
            offset: (header.offset != u64::MAX).then_some(header.offset),
            flags: header.flags,
            video: header.video.map(Box::new),
            memories,
        })
    }
}

impl AsFd for Consumer {
    /// The socket: readable when a packet is waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

/// What [`Consumer::poll_frame`] found.
pub enum Poll {
    Frame(Frame),
    /// Nothing yet (or a packet that was not a frame).
    Pending,
    /// The end of the stream: the producer sent EOS.
    Ended,
}

fn time(ns: u64) -> Option<Duration> {
    (ns != TIME_NONE).then(|| Duration::from_nanos(ns))
}

/// One memory of a frame: a window of a file.
#[derive(Clone)]
pub struct FrameMemory {
    pub kind: MemoryKind,
    file: MemoryFile,
    pub offset: u64,
    pub size: u64,
}

/// The file a frame's memory is a window of.
#[derive(Clone)]
enum MemoryFile {
    /// A file the producer registered, with its shared mapping.
    Registered(Arc<RegisteredFile>),
    /// A file sent with this frame only, and its size when checked.
    Once { fd: Arc<OwnedFd>, size: u64 },
}

impl FrameMemory {
    /// The file (a sealed memfd, or a dmabuf of the producer's device).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.file {
            MemoryFile::Registered(file) => file.fd.as_fd(),
            MemoryFile::Once { fd, .. } => fd.as_fd(),
        }
    }

    /// The file's size when checked: no window past it is mapped.
    fn file_size(&self) -> u64 {
        match &self.file {
            MemoryFile::Registered(file) => file.size,
            MemoryFile::Once { size, .. } => *size,
        }
    }

    /// Maps the memory read-only: a window of its file's mapping when the producer
    /// registered the file (mapped once for all frames on it), else a mapping of its own.
    /// A dmabuf is bracketed by DMA_BUF_IOCTL_SYNC either way (start now, end on drop).
    pub fn map(&self) -> std::io::Result<Mapping> {
        self.map_window(self.offset, self.size)
    }

    /// Maps any window `[offset, offset + len)` of the memory's file read-only, as
    /// [`FrameMemory::map`] does (for one window over several memories of one file).
    pub fn map_window(&self, offset: u64, len: u64) -> std::io::Result<Mapping> {
        let file_size = self.file_size();
        if offset.checked_add(len).is_none_or(|end| end > file_size) {
            return Err(std::io::Error::other(format!(
                "window {offset}+{len} outside the {file_size}-byte file"
            )));
        }
        match &self.file {
            MemoryFile::Registered(file) => file.map(offset, len),
            MemoryFile::Once { fd, .. } => Mapping::new(fd.as_fd(), self.kind, offset, len),
        }
    }
}

/// A frame from the producer, released back to it when dropped.
pub struct Frame {
    conn: Arc<Connection>,
    buffer_id: u64,
    caps: Arc<str>,
    pts: Option<Duration>,
    dts: Option<Duration>,
    duration: Option<Duration>,
    offset: Option<u64>,
    flags: u32,
    /// Boxed: most frames are light, and `Poll` carries them by value.
    video: Option<Box<VideoLayout>>,
    memories: Vec<FrameMemory>,
}

/// GstBufferFlags bits a consumer most often asks about.
pub const FLAG_DISCONT: u32 = 1 << 6;
/// Not a keyframe (GST_BUFFER_FLAG_DELTA_UNIT).
pub const FLAG_DELTA_UNIT: u32 = 1 << 13;

impl Frame {
    /// The stream's caps when the frame was sent (GStreamer's caps text).
    pub fn caps(&self) -> &str {
        &self.caps
    }
    /// For DMA_DRM caps (GStreamer >= 1.24 decoders), the DRM fourcc code and modifier of the
    /// frame's dmabufs, to import them (EGL_EXT_image_dma_buf_import_modifiers, Vulkan).
    pub fn drm_format(&self) -> Option<(u32, u64)> {
        crate::drm_format::of_caps(&self.caps)
    }
    /// Presentation time in the producer's segment, if it has one.
    pub fn pts(&self) -> Option<Duration> {
        self.pts
    }
    pub fn dts(&self) -> Option<Duration> {
        self.dts
    }
    pub fn duration(&self) -> Option<Duration> {
        self.duration
    }
    /// The producer's buffer offset (a frame number, for video sources that set it).
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
    /// GstBufferFlags bits ([`FLAG_DISCONT`], [`FLAG_DELTA_UNIT`], ...).
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// A keyframe: the producer did not mark it a delta unit.
    pub fn is_keyframe(&self) -> bool {
        self.flags & FLAG_DELTA_UNIT == 0
    }
    /// The video layout (format as a GstVideoFormat value, size, plane offsets and strides
    /// across the frame's bytes), when the producer sent one.
    pub fn video(&self) -> Option<&VideoLayout> {
        self.video.as_deref()
    }
    /// The frame's memories, in order; none for a buffer without bytes.
    pub fn memories(&self) -> &[FrameMemory] {
        &self.memories
    }
    /// Maps every memory read-only (see [`FrameMemory::map`]). The mapping may outlive the
    /// frame and later frames: it holds what it reads.
    pub fn map(&self) -> std::io::Result<MappedFrame> {
        let maps = self
            .memories
            .iter()
            .map(FrameMemory::map)
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MappedFrame { maps })
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // A producer that is gone needs no release; one whose socket is full gets it within
        // the wait, as fdlinksrc's releases do.
        let _ = self.conn.send_timeout(
            &protocol::encode_release(self.buffer_id),
            &[],
            Duration::from_secs(1),
        );
    }
}

/// A frame's memories mapped read-only.
pub struct MappedFrame {
    maps: Vec<Mapping>,
}

impl MappedFrame {
    /// Each memory's bytes, in order.
    pub fn memories(&self) -> impl Iterator<Item = &[u8]> {
        self.maps.iter().map(Mapping::bytes)
    }
    /// All bytes, as `gst_buffer_extract` would give them; a copy only when the frame has
    /// more than one memory.
    pub fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.maps.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [one] => std::borrow::Cow::Borrowed(one.bytes()),
            many => std::borrow::Cow::Owned(many.iter().flat_map(|m| m.bytes()).copied().collect()),
        }
    }
    /// The frame's size in bytes.
    pub fn len(&self) -> usize {
        self.maps.iter().map(|m| m.bytes().len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
