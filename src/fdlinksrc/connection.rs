//! fdlinksrc's connection to its producer: connecting (to `socket-path`, waiting for a
//! producer to appear there, or over an inherited socket) and the hello, both through
//! `fdlink::endpoint`; then the reader thread (`Link`). A producer that goes away without EOS
//! is an error, or with `reconnect=true` the element connects again with backoff, telling the
//! application with the `fdlink-disconnected` and `fdlink-reconnected` element messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, FdlinkSrc, Stop, protocol_error};
use super::link::{Link, QueueLimit};
use super::peer::ProducerPeer;
use super::stream::Stream;
use crate::session::Mode;
use fdlink::endpoint::{self, ConnectError, HELLO_TIMEOUT, HandshakeError, Reconnect};
use fdlink::peer_check::{PeerCredentials, PeerPolicy};
use fdlink::protocol::{self, Hello};
use fdlink::transport::{Connection, TransportError, Waker};

/// `timeout=0`: a wait that outlasts any pipeline (the waker still ends it).
const WAIT_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Where and how to connect, and the reconnect under way.
pub struct Connector {
    /// The socket path, or a description of the inherited fd (for messages).
    pub path: PathBuf,
    inherited_fd: Option<i32>,
    /// How long the first connect waits for a producer to appear at `path`; None: no limit.
    timeout: Option<Duration>,
    reconnect: bool,
    /// None: no limit.
    retry_timeout: Option<Duration>,
    /// Set while looking for a new producer after the last one went away (reconnect=true).
    lost: Option<Lost>,
    /// Whose producers are trusted (allowed-uids, allowed-gids).
    peers: PeerPolicy,
}

/// The producer went away without EOS, and `reconnect=true`.
struct Lost {
    /// What happened to the last producer.
    why: String,
    attempts: Reconnect,
}

/// What [`Connector::producer_lost`] makes of a producer gone.
enum LostAt {
    /// It was streaming: the element starts reconnecting.
    Streaming,
    /// It was a new producer that went away during the hello: one more failed attempt.
    Hello,
}

impl Connector {
    pub fn new(
        path: PathBuf,
        inherited_fd: Option<i32>,
        timeout: Option<Duration>,
        reconnect: bool,
        retry_timeout: Option<Duration>,
    ) -> Connector {
        Connector {
            path,
            inherited_fd,
            timeout,
            reconnect,
            retry_timeout,
            lost: None,
            peers: PeerPolicy::own_uid_only("fdlinksrc"),
        }
    }

    /// Trusts the producers `peers` allows (by default: this process's uid and root).
    pub fn trusting(mut self, peers: PeerPolicy) -> Connector {
        self.peers = peers;
        self
    }

    /// Checks the producer's credentials before anything is sent to it: one not allowed is
    /// told why and the stream fails (with reconnect=true too: whoever holds the path then is
    /// not the producer this consumer waits for).
    fn check_producer(&self, imp: &FdlinkSrc, conn: &Connection) -> Result<(), Stop> {
        let producer = PeerCredentials::of(conn);
        let who = producer
            .as_ref()
            .map_or_else(|| "unknown credentials".into(), |p| p.to_string());
        match self.peers.check(producer.as_ref()) {
            Ok(()) => {
                gst::info!(
                    CAT,
                    imp = imp,
                    "producer at {} has {who}",
                    self.path.display()
                );
                Ok(())
            }
            Err(refusal) => {
                conn.send_error(&format!(
                    "the consumer does not trust this producer: {refusal}"
                ));
                Err(Stop::Error(gst::error_msg!(
                    gst::ResourceError::NotAuthorized,
                    (
                        "fdlink producer at {} ({who}) is not trusted: its {refusal}",
                        self.path.display()
                    )
                )))
            }
        }
    }

    /// Connects (the first time, or again after the producer went away) and runs the hello;
    /// returns the connection with the producer's hello.
    fn connect(
        &mut self,
        imp: &FdlinkSrc,
        capabilities: u32,
        waker: &Waker,
    ) -> Result<(Arc<Connection>, Hello), Stop> {
        let conn = match (&mut self.lost, self.inherited_fd) {
            (Some(lost), _) => match lost.attempts.connect(&self.path, waker) {
                Ok(conn) => conn,
                Err(e) => {
                    return Err(reconnect_error(
                        &self.path,
                        self.retry_timeout,
                        &lost.why,
                        e,
                    ));
                }
            },
            (None, Some(fd)) => Connection::inherit(fd).map_err(|e| {
                Stop::Error(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    (
                        "cannot connect through fd {fd}: {e}: set fd to one end of a SOCK_SEQPACKET socketpair this process inherited"
                    )
                ))
            })?,
            (None, None) => {
                let timeout = self.timeout.unwrap_or(WAIT_FOREVER);
                endpoint::connect_waiting(&self.path, timeout, waker).map_err(|e| match e {
                    ConnectError::Interrupted => Stop::Flushing,
                    e => Stop::Error(gst::error_msg!(gst::ResourceError::OpenRead, ("{e}"))),
                })?
            }
        };
        self.check_producer(imp, &conn)?;
        let producer = endpoint::consumer_hello(&conn, capabilities, Some(waker), HELLO_TIMEOUT)
            .map_err(|e| self.hello_error(e))?;
        gst::info!(
            CAT,
            imp = imp,
            "connected to producer pid {} at {}",
            producer.pid,
            self.path.display()
        );
        Ok((Arc::new(conn), producer))
    }

    fn hello_error(&self, e: HandshakeError) -> Stop {
        match e {
            HandshakeError::Interrupted => Stop::Flushing,
            // Counts as the producer going away (with reconnect=true: one more attempt).
            HandshakeError::PeerClosed => Stop::Lost(e.to_string()),
            HandshakeError::Refused(msg) => Stop::Error(gst::error_msg!(
                gst::ResourceError::NotAuthorized,
                (
                    "fdlink producer at {} refused this consumer: {msg}",
                    self.path.display()
                )
            )),
            HandshakeError::Malformed(d) => protocol_error(&self.path, d.to_string()),
            HandshakeError::WrongRole { .. }
            | HandshakeError::VersionMismatch { .. }
            | HandshakeError::FdsInHello => protocol_error(&self.path, e.to_string()),
            HandshakeError::TimedOut(_) | HandshakeError::Transport(_) => {
                Stop::Error(gst::error_msg!(
                    gst::ResourceError::Read,
                    (
                        "fdlink producer at {} failed during the hello: {e}",
                        self.path.display()
                    )
                ))
            }
        }
    }

    /// A socket error while `doing`: the producer went away (`Stop::Lost`), or an error.
    pub fn link_error(&self, doing: &str, e: TransportError) -> Stop {
        if endpoint::peer_gone(&e) {
            return Stop::Lost(format!("{e} while {doing}"));
        }
        Stop::Error(gst::error_msg!(
            gst::ResourceError::Read,
            (
                "fdlink producer at {} failed while {doing}: {e}",
                self.path.display()
            )
        ))
    }

    /// The producer went away without EOS (`why`): an error with reconnect=false, or a
    /// reconnect starts (or, for a new producer lost during its hello, goes on).
    fn producer_lost(&mut self, why: &str) -> Result<LostAt, Stop> {
        if !self.reconnect {
            return Err(Stop::Error(gst::error_msg!(
                gst::ResourceError::Read,
                (
                    "producer disconnected from {} without EOS ({why}); reconnect=false, so this stream ends here",
                    self.path.display()
                )
            )));
        }
        if let Some(lost) = &mut self.lost {
            lost.attempts.failed(why);
            return Ok(LostAt::Hello);
        }
        self.lost = Some(Lost {
            why: why.to_string(),
            attempts: Reconnect::new(self.retry_timeout, why),
        });
        Ok(LostAt::Streaming)
    }
}

/// Why connecting again after the producer went away (`why`) failed.
fn reconnect_error(
    path: &Path,
    retry_timeout: Option<Duration>,
    why: &str,
    e: ConnectError,
) -> Stop {
    Stop::Error(match e {
        ConnectError::Interrupted => return Stop::Flushing,
        ConnectError::GaveUp {
            attempts,
            last_failure,
            ..
        } => gst::error_msg!(
            gst::ResourceError::OpenRead,
            (
                "fdlink producer at {} went away without EOS ({why}) and no producer came back within retry-timeout={} ms ({attempts} connection attempts; the last one: {last_failure})",
                path.display(),
                retry_timeout.unwrap_or_default().as_millis(),
            )
        ),
        ConnectError::Failed { source, .. } | ConnectError::NoProducer { last: source, .. } => {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "cannot reconnect to {} after the producer went away: {source}",
                    path.display()
                )
            )
        }
    })
}

impl FdlinkSrc {
    /// Connects (the first time, or again after the producer went away) and starts the
    /// reader.
    pub(super) fn open_link(&self, stream: &mut Stream, waker: &Waker) -> Result<Arc<Link>, Stop> {
        let capabilities = if self.settings.lock().unwrap().mode == Mode::Follow {
            protocol::CAP_FOLLOWS
        } else {
            0
        };
        let (conn, producer) = stream.connector.connect(self, capabilities, waker)?;
        let peer = ProducerPeer {
            obj: self.obj().downgrade(),
            producer_pid: producer.pid,
        };
        let limit = QueueLimit {
            hold_limit: producer.hold_limit as usize,
            ..stream.queue_limit
        };
        let link = Link::start(conn, peer, limit, self.counters.clone())
            .map_err(|e| stream.connector.link_error("starting the reader", e))?;
        stream.link = Some(link.clone());
        stream.frames_from_link = 0;
        if let Some(lost) = stream.connector.lost.take() {
            stream.new_producer = true;
            let reconnects = {
                let mut stats = self.stats.lock().unwrap();
                stats.reconnects += 1;
                stats.reconnects
            };
            let down = lost.attempts.since().elapsed();
            let attempts = lost.attempts.attempts();
            let path = stream.connector.path.display();
            gst::info!(
                CAT,
                imp = self,
                "reconnected to producer pid {} at {path} after {attempts} attempts, {} ms",
                producer.pid,
                down.as_millis()
            );
            let s = gst::Structure::builder("fdlink-reconnected")
                .field("socket-path", path.to_string())
                .field("attempts", attempts)
                .field("downtime-ms", down.as_millis() as u64)
                .field("reconnects", reconnects)
                .field("producer-pid", producer.pid)
                .build();
            self.post_local_message(s);
        }
        {
            // A follower (not live) connects in PAUSED, where a full queue must not stop
            // the reader; a live source, only once PLAYING.
            let mut slot = self.link.lock().unwrap();
            link.set_streaming(self.playing.load(Ordering::SeqCst));
            *slot = Some(link.clone());
        }
        // The producer learns where we are (it may follow us), and this pipeline asks for its
        // latency again, now that the producer can answer.
        self.send_state(self.obj().current_state());
        let _ = self
            .obj()
            .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        Ok(link)
    }

    /// The producer went away without EOS: lets go of its connection, and starts looking for
    /// a new producer (reconnect=true) or fails.
    pub(super) fn producer_lost(&self, stream: &mut Stream, why: String) -> Result<(), Stop> {
        // Not under the `link` lock: see stop().
        let link = self.link.lock().unwrap().take();
        if let Some(link) = link {
            link.shutdown();
        }
        // The last reference to the connection goes with the link (and its queued packets'
        // fds with it): buffers still downstream hold only a Weak, so their releases become
        // no-ops and never reach the next producer.
        stream.link = None;
        match stream.connector.producer_lost(&why)? {
            LostAt::Hello => {
                gst::info!(CAT, imp = self, "reconnect attempt failed: {why}");
                return Ok(());
            }
            LostAt::Streaming => {}
        }
        let path = stream.connector.path.display().to_string();
        gst::warning!(
            CAT,
            imp = self,
            "producer at {path} went away without EOS ({why}): reconnecting"
        );
        // What the next producer says replaces all of this.
        stream.forget_producer();
        let s = gst::Structure::builder("fdlink-disconnected")
            .field("socket-path", path)
            .field("reason", why)
            .build();
        self.post_local_message(s);
        Ok(())
    }

    /// Posts an element message for this pipeline's application only: the bus watch does
    /// not forward it to the producer.
    fn post_local_message(&self, s: gst::Structure) {
        let msg = gst::message::Element::builder(s).src(&*self.obj()).build();
        self.reposted.remember(msg.seqnum());
        let _ = self.obj().post_message(msg);
    }
}
