//! A hub whose control thread serves one consumer over a socket pair, for unit tests: the test
//! is the consumer (`consumer`) and the streaming thread (calls on `hub`). The hub holds `()`
//! for each frame; the frame's memfd is the test's.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Frame, Hub, HubEvent, Limits, SlowPolicy, SyncMethod};
use crate::fdkind::create_sealed_memfd;
use crate::protocol::{self, BufferHeader, Hello, MAX_PACKET_SIZE, Packet, Role};
use crate::transport::Connection;

pub(super) const LONG: Duration = Duration::from_secs(60);
pub(super) const WAIT: Duration = Duration::from_secs(5);

pub(super) struct Rig {
    pub(super) hub: Arc<Hub<()>>,
    pub(super) consumer: Connection,
    pub(super) events: mpsc::Receiver<HubEvent>,
    control: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
    /// Its fds come and go while it runs: tests that count fds wait (dropped last).
    _fds: MutexGuard<'static, ()>,
}

impl Rig {
    /// A hub with this release grace and `max_held`, and its one consumer past the hello.
    pub(super) fn new(grace: Duration, max_held: u32) -> Rig {
        let fds = crate::test_support::fd_lock();
        let (consumer, producer) = Connection::pair().unwrap();
        let (tx, events) = mpsc::channel();
        let tx = Mutex::new(tx);
        let limits = Limits {
            max_held,
            max_held_total: 0,
            max_queued: 4,
            policy: SlowPolicy::Block,
            sync_method: SyncMethod::Latest,
            slow_wait: Duration::from_secs(1),
            max_clients: 0,
        };
        let hub = Hub::new(limits, true, move |ev| {
            let _ = tx.lock().unwrap().send(ev);
        })
        .unwrap();
        hub.set_release_grace(grace);
        let control = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.run_control(None, Some(producer)))
        };
        let mut rig = Rig {
            hub,
            consumer,
            events,
            control: Some(control),
            buf: vec![0; MAX_PACKET_SIZE],
            _fds: fds,
        };
        let got = rig.consumer.recv_wait(&mut rig.buf, None, Some(WAIT));
        assert!(matches!(got, Ok(Some(_))), "the producer's hello");
        let hello = protocol::encode_hello(&Hello::new(Role::Consumer, std::process::id()));
        rig.consumer.try_send(&hello, &[]).unwrap();
        // Its connection accepted (logged), then its hello.
        match rig.events.recv_timeout(WAIT).unwrap() {
            HubEvent::Info(accepted) => assert!(accepted.contains("accepted"), "{accepted}"),
            _ => panic!("expected the connection to be accepted"),
        }
        match rig.events.recv_timeout(WAIT).unwrap() {
            HubEvent::ConsumerAdded { .. } => {}
            _ => panic!("expected the consumer to be added"),
        }
        rig
    }

    pub(super) fn recv(&mut self) -> Option<Packet<OwnedFd>> {
        let got = self
            .consumer
            .recv_wait(&mut self.buf, None, Some(WAIT))
            .ok()??;
        Packet::decode(&self.buf[..got.len], got.fds).ok()
    }

    /// Offers frame `id` as the streaming thread does, non-live (`reads_releases`) or live.
    pub(super) fn offer(&self, id: u64, reads_releases: bool) {
        // One memfd page: a buffer packet describes at least one memory.
        let memfd = create_sealed_memfd("hub-test", 4096).unwrap();
        let mut header = BufferHeader {
            buffer_id: id,
            ..Default::default()
        };
        header.memories.push(protocol::MemoryDesc {
            kind: protocol::MemoryKind::Memfd,
            fd_index: 0,
            file_id: 0,
            offset: 0,
            size: 4096,
        });
        let frame = Frame {
            id,
            header: &header,
            fds: &[memfd.as_fd()],
            size: 4096,
            keyframe: true,
            slow_copy: false,
            preroll: false,
            reads_releases,
        };
        let sent = self.hub.send_buffer(&frame, (), None).sent_to;
        if sent != 1 {
            while let Ok(ev) = self.events.try_recv() {
                if let HubEvent::ConsumerRemoved { reason, .. } = ev {
                    panic!("consumer removed: {reason}");
                }
            }
        }
        assert_eq!(sent, 1);
    }

    /// Takes the buffer packet of frame `id` off the socket and releases it.
    pub(super) fn take_and_release(&mut self, id: u64) {
        match self.recv().expect("a buffer packet") {
            Packet::Buffer(header, _) => assert_eq!(header.buffer_id, id),
            _ => panic!("expected buffer {id}"),
        }
        self.consumer
            .try_send(&protocol::encode_release(id), &[])
            .unwrap();
    }

    pub(super) fn releases(&self) -> u64 {
        self.hub.stats().0.releases
    }

    /// The releases the hub has read once `n` arrived or [`WAIT`] passed.
    pub(super) fn wait_releases(&self, n: u64) -> u64 {
        let deadline = std::time::Instant::now() + WAIT;
        while self.releases() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.releases()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.hub.shutdown();
        if let Some(control) = self.control.take() {
            control.join().unwrap();
        }
        self.hub.clear();
    }
}
