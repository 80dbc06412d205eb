//! fdlinksink's start: listening on `socket-path` (or serving the inherited `fd`), the hub
//! and its control thread. Run from `change_state`, before BaseSink's part of NULL to READY:
//! a start that fails in BaseSink's `start` makes BaseSink post a second, generic error after
//! the one that names the cause.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::super::CAT;
use super::super::hub::{Hub, Limits};
use super::super::properties::default_max_held_total;
use super::super::send::Sender;
use super::{FdlinkSink, SLOW_CONSUMER_WAIT, State};
use fdlink::transport::{Connection, Listener, TransportError};

impl FdlinkSink {
    /// Listens on `socket-path` (or takes the inherited `fd`), makes the hub and starts its
    /// control thread: BaseSink's start, run from `change_state` (see `start`).
    pub(super) fn start_serving(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let peers = settings.access.policy("fdlinksink")?;
        let socket_access = settings.access.socket()?;
        // The stats start again with the hub made below.
        self.copy_ns.store(0, Ordering::Relaxed);
        self.pipeline_error.clear();
        let (listener, inherited, endpoint) = if settings.fd >= 0 {
            let conn = Connection::inherit(settings.fd).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    (
                        "cannot serve a consumer on fd {}: {e}: set fd to one end of a SOCK_SEQPACKET socketpair this process inherited",
                        settings.fd
                    )
                )
            })?;
            (None, Some(conn), format!("inherited fd {}", settings.fd))
        } else {
            let Some(path) = settings.socket_path.map(PathBuf::from) else {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("socket-path is not set (nor fd): set socket-path to the socket this fdlinksink is to listen on, or fd to an inherited socketpair end")
                ));
            };
            let listener = Listener::bind_with(&path, &socket_access).map_err(|e| {
                match e {
                    // These name the path, the cause and what to do.
                    TransportError::CannotCreate { .. }
                    | TransportError::InUse { .. }
                    | TransportError::NotASocket { .. }
                    | TransportError::PathTooLong { .. } => {
                        gst::error_msg!(gst::ResourceError::OpenReadWrite, ("{e}"))
                    }
                    e => gst::error_msg!(
                        gst::ResourceError::OpenReadWrite,
                        ("cannot listen on {}: {e}", path.display())
                    ),
                }
            })?;
            (Some(listener), None, path.display().to_string())
        };
        let obj = self.obj().downgrade();
        let limits = Limits {
            max_held: settings.max_held,
            max_held_total: settings
                .max_held_total
                .unwrap_or_else(|| default_max_held_total(settings.max_held)),
            max_queued: settings.max_queued,
            policy: settings.slow_policy.into(),
            sync_method: settings.sync_method.into(),
            slow_wait: SLOW_CONSUMER_WAIT,
            max_clients: settings.max_clients,
        };
        let hub = Hub::new(limits, settings.register_fds, move |ev| {
            if let Some(obj) = obj.upgrade() {
                obj.imp().on_hub_event(ev);
            }
        })
        .map_err(|e| gst::error_msg!(gst::ResourceError::Failed, ("{e}")))?;
        hub.set_peer_policy(peers);
        // The hub's log lines are made only when this category prints them (checked at start).
        hub.set_log_level(match CAT.threshold() {
            l if l >= gst::DebugLevel::Log => fdlink::hub::HubLog::Log,
            l if l >= gst::DebugLevel::Debug => fdlink::hub::HubLog::Debug,
            _ => fdlink::hub::HubLog::Quiet,
        });
        let control_hub = hub.clone();
        let control = std::thread::Builder::new()
            .name("fdlinksink-ctl".into())
            .spawn(move || {
                control_hub.run_control(listener.as_ref(), inherited);
                // The listener drops here, unlinking the socket path.
            })
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Failed, ("cannot spawn thread: {e}"))
            })?;
        gst::info!(CAT, imp = self, "serving consumers on {endpoint}");
        *self.hub.lock().unwrap() = Some(hub);
        *self.state.lock().unwrap() = State::Started {
            control,
            sender: Box::new(Sender::new(settings.yield_after_send)),
            preroll_sent: None,
        };
        self.stats_interval.start(self.obj().upcast_ref());
        Ok(())
    }
}
