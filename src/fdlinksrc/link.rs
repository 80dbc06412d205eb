//! The consumer's side of a connection. A reader thread takes every packet off the socket:
//! query replies go straight to the thread waiting for them; queries, state changes and
//! messages from the producer are handled here, whatever the streaming thread is doing
//! (downstream elements ask their questions from the streaming thread itself, and a paused
//! live source runs no streaming thread at all); everything else waits, in order, in an inbox
//! that `create()` takes from.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control::PendingQueries;
use crate::protocol::{
    MAX_PACKET_SIZE, MessagePacket, Packet, QueryPacket, QueryReplyPacket, StatePacket,
};
use crate::transport::{Connection, TransportError, Waker};

/// How long a reply or an error packet may wait for room in the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What `next()` hands the streaming thread.
pub enum Inbound {
    Packet(Packet<OwnedFd>),
    /// The producer closed the connection.
    Closed,
    /// The socket failed (the producer is gone or unreachable); the text says how.
    Lost(String),
    /// The producer broke the protocol; the text says how.
    Failed(String),
}

#[derive(Default)]
struct Inbox {
    packets: VecDeque<Packet<OwnedFd>>,
    end: Option<Inbound>,
    flushing: bool,
}

/// What the reader thread does with the producer's out-of-band packets.
pub trait LinkPeer: Send + 'static {
    /// Answers a query from the producer.
    fn answer(&self, query: &QueryPacket) -> QueryReplyPacket;
    /// The producer's element reached a state.
    fn state(&self, state: StatePacket);
    /// A message from the producer's bus.
    fn message(&self, message: MessagePacket);
}

pub struct Link {
    pub conn: Arc<Connection>,
    pub pending: PendingQueries,
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    stop: Waker,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Link {
    /// Starts the reader thread on a connection whose hello is done; `peer` handles the
    /// producer's queries, states and messages on that thread.
    pub fn start(conn: Arc<Connection>, peer: impl LinkPeer) -> Result<Arc<Link>, TransportError> {
        let link = Arc::new(Link {
            conn,
            pending: PendingQueries::default(),
            inbox: Mutex::new(Inbox::default()),
            arrived: Condvar::new(),
            stop: Waker::new()?,
            reader: Mutex::new(None),
        });
        let reader = link.clone();
        let handle = std::thread::Builder::new()
            .name("fdlinksrc-read".into())
            .spawn(move || reader.read_loop(peer))
            .map_err(|e| TransportError::Sys {
                op: "spawn",
                what: format!("reader thread: {e}"),
                errno: nix::errno::Errno::EAGAIN,
            })?;
        *link.reader.lock().unwrap() = Some(handle);
        Ok(link)
    }

    fn read_loop(&self, peer: impl LinkPeer) {
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let end = loop {
            let got = match self.conn.recv_wait(&mut buf, Some(&self.stop), None) {
                Ok(Some(got)) => got,
                Ok(None) => break None,
                Err(TransportError::Closed) => break Some(Inbound::Closed),
                Err(e @ (TransportError::Truncated | TransportError::FdsTruncated)) => {
                    self.conn.send_error(&e.to_string());
                    break Some(Inbound::Failed(e.to_string()));
                }
                Err(e) => break Some(Inbound::Lost(e.to_string())),
            };
            match Packet::decode(&buf[..got.len], got.fds) {
                Ok(Packet::QueryReply(reply)) => self.pending.deliver(reply),
                Ok(Packet::Query(q)) => {
                    let reply = Packet::QueryReply(peer.answer(&q));
                    let _ = self.conn.send_packet(&reply, Some(SEND_TIMEOUT));
                }
                Ok(Packet::State(st)) => peer.state(st),
                Ok(Packet::Message(m)) => peer.message(m),
                Ok(packet) => {
                    self.inbox.lock().unwrap().packets.push_back(packet);
                    self.arrived.notify_all();
                }
                Err(e) => {
                    let msg = format!("malformed packet: {e}");
                    self.conn.send_error(&msg);
                    break Some(Inbound::Failed(msg));
                }
            }
        };
        self.pending.close();
        if let Some(end) = end {
            self.inbox.lock().unwrap().end = Some(end);
            self.arrived.notify_all();
        }
    }

    /// The next packet (or the end); None while flushing.
    pub fn next(&self) -> Option<Inbound> {
        let mut inbox = self.inbox.lock().unwrap();
        loop {
            if inbox.flushing {
                return None;
            }
            if let Some(p) = inbox.packets.pop_front() {
                return Some(Inbound::Packet(p));
            }
            if let Some(end) = inbox.end.take() {
                // Stays ended for later calls.
                inbox.end = Some(match &end {
                    Inbound::Closed => Inbound::Closed,
                    Inbound::Lost(m) => Inbound::Lost(m.clone()),
                    Inbound::Failed(m) => Inbound::Failed(m.clone()),
                    Inbound::Packet(_) => unreachable!("only ends are stored"),
                });
                return Some(end);
            }
            inbox = self.arrived.wait(inbox).unwrap();
        }
    }

    /// `unlock()`/`unlock_stop()`: make `next()` return None, or wait again.
    pub fn set_flushing(&self, flushing: bool) {
        self.inbox.lock().unwrap().flushing = flushing;
        self.arrived.notify_all();
    }

    /// Stops the reader and fails every waiting query. Packets not taken are dropped (their fds
    /// closed); the producer frees what this consumer held when the socket closes.
    pub fn shutdown(&self) {
        self.stop.wake();
        if let Some(handle) = self.reader.lock().unwrap().take() {
            let _ = handle.join();
        }
        self.pending.close();
        self.set_flushing(true);
    }
}
