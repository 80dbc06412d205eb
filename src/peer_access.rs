//! Who may be at the other end, for both elements: `allowed-uids` and `allowed-gids` (the
//! peer's kernel credentials, checked by `fdlink::peer_check`), and fdlinksink's
//! `socket-mode` and `socket-group` (the socket file's permissions). Values are strings as a
//! gst-launch user types them (`allowed-uids="1000,1001"`, `socket-mode=0660`), checked at
//! start, where a bad one fails with an error that says how to write it.

use gst::glib;
use gst::prelude::*;

use fdlink::peer_check::{Ids, PeerPolicy};
use fdlink::transport::SocketAccess;

/// The socket file's default mode: the owner and the file's group may connect (write
/// permission), nobody else. Group members are still refused unless `allowed-uids` or
/// `allowed-gids` names them, so the default serves the owner and root only, and a shared
/// setup needs `socket-group` plus `allowed-gids` and no mode change.
pub const DEFAULT_SOCKET_MODE: &str = "0660";

/// The access properties' values, as set.
#[derive(Debug, Clone)]
pub struct Access {
    allowed_uids: Option<String>,
    allowed_gids: Option<String>,
    socket_mode: String,
    socket_group: Option<String>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            allowed_uids: None,
            allowed_gids: None,
            socket_mode: DEFAULT_SOCKET_MODE.into(),
            socket_group: None,
        }
    }
}

/// `allowed-uids` and `allowed-gids`; `peer` says who the other end is ("consumer",
/// "producer") for the blurbs.
pub fn peer_properties(peer: &str) -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("allowed-uids")
            .nick("Allowed uids")
            .blurb(&format!("Uids a {peer} may run as besides this process's own and root (checked with SO_PEERCRED), separated by commas, e.g. \"1000,1001\"; \"*\" or -1: anyone. Any other {peer} is refused with an error naming its uid"))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("allowed-gids")
            .nick("Allowed gids")
            .blurb(&format!("Numeric gids, separated by commas: a {peer} with one of them as its primary or a supplementary group (SO_PEERCRED, SO_PEERGROUPS) is allowed too; \"*\" or -1: anyone"))
            .mutable_ready()
            .build(),
    ]
}

/// fdlinksink's `socket-mode` and `socket-group`.
pub fn socket_properties() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("socket-mode")
            .nick("Socket file mode")
            .blurb("Permission bits of the socket file, octal as systemd's SocketMode= (connecting needs write permission on it), set before anyone can connect and regardless of the umask: 0660 lets the owner and the file's group connect, 0600 the owner only, 0666 anyone (allowed-uids still applies)")
            .default_value(Some(DEFAULT_SOCKET_MODE))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("socket-group")
            .nick("Socket file group")
            .blurb("Group (name or numeric gid) the socket file is given, so that its members may connect with socket-mode's group bits (allow them with allowed-gids); the producer must be root or a member of it. Unset: the producer's group")
            .mutable_ready()
            .build(),
    ]
}

impl Access {
    /// Sets one of the properties above.
    pub fn set(&mut self, name: &str, value: &glib::Value) {
        let text: Option<String> = value.get().expect("type checked upstream");
        match name {
            "allowed-uids" => self.allowed_uids = text,
            "allowed-gids" => self.allowed_gids = text,
            "socket-mode" => self.socket_mode = text.unwrap_or_else(|| DEFAULT_SOCKET_MODE.into()),
            "socket-group" => self.socket_group = text,
            _ => unimplemented!(),
        }
    }

    pub fn get(&self, name: &str) -> glib::Value {
        match name {
            "allowed-uids" => self.allowed_uids.to_value(),
            "allowed-gids" => self.allowed_gids.to_value(),
            "socket-mode" => self.socket_mode.to_value(),
            "socket-group" => self.socket_group.to_value(),
            _ => unimplemented!(),
        }
    }

    /// The peers this element (`element`: its factory name, for the refusal's advice) serves
    /// or trusts.
    pub fn policy(&self, element: &'static str) -> Result<PeerPolicy, gst::ErrorMessage> {
        let ids = |text: &Option<String>, property| {
            Ids::parse(text.as_deref().unwrap_or(""), property)
                .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{e}")))
        };
        Ok(PeerPolicy::own_uid_only(element)
            .with_uids(ids(&self.allowed_uids, "allowed-uids")?)
            .with_gids(ids(&self.allowed_gids, "allowed-gids")?))
    }

    /// The socket file's mode and group.
    pub fn socket(&self) -> Result<SocketAccess, gst::ErrorMessage> {
        let setting = |e: fdlink::transport::AccessSettingError| {
            gst::error_msg!(gst::ResourceError::Settings, ("{e}"))
        };
        Ok(SocketAccess {
            mode: Some(SocketAccess::parse_mode(&self.socket_mode).map_err(setting)?),
            group: self
                .socket_group
                .as_deref()
                .filter(|g| !g.trim().is_empty())
                .map(SocketAccess::resolve_group)
                .transpose()
                .map_err(setting)?,
        })
    }
}
