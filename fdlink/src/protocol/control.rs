//! The control plane's packets: events, queries and their replies, bus messages, state changes
//! and the preroll report. GStreamer objects travel as their type value and their structure
//! serialized to a string; the plugin turns them back into objects.

use super::reader::{Reader, put_str};
use super::{DecodeError, EncodeError};

/// A serialized event: the GstEventType value and its structure as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPacket {
    pub event_type: u32,
    pub seqnum: u32,
    /// `gst_structure_to_string` of the event's structure, empty when it has none.
    pub structure: String,
}

/// A state change of the sending element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePacket {
    /// GstState value: 1 NULL, 2 READY, 3 PAUSED, 4 PLAYING.
    pub state: u8,
    /// Whether the sender itself follows its peer (both sides following is refused).
    pub sender_follows: bool,
}

impl StatePacket {
    /// GstState PAUSED: the sender paused, a preroll barrier.
    pub const PAUSED: u8 = 3;
    /// GstState PLAYING.
    pub const PLAYING: u8 = 4;
}

/// A serialized query: its GstQueryType value and its structure as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPacket {
    pub id: u32,
    pub query_type: u32,
    pub structure: String,
}

/// The answer to a query: whether the other side answered it, and the filled-in structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryReplyPacket {
    pub id: u32,
    pub answered: bool,
    pub structure: String,
}

/// A serialized bus message: its GstMessageType bits, the path of the element that posted it,
/// and its structure as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePacket {
    pub message_type: u32,
    pub source: String,
    pub structure: String,
}

/// Appends a downstream event's payload: type, seqnum, the producer's base time, structure.
pub(super) fn encode_event(ev: &EventPacket, base_time: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&ev.event_type.to_le_bytes());
    out.extend_from_slice(&ev.seqnum.to_le_bytes());
    out.extend_from_slice(&base_time.to_le_bytes());
    put_str(out, &ev.structure);
}

/// Reads a downstream event's payload: the event and the producer's base time.
pub(super) fn decode_event(r: &mut Reader<'_>) -> Result<(EventPacket, u64), DecodeError> {
    let event_type = r.u32()?;
    let seqnum = r.u32()?;
    let base_time = r.u64()?;
    let structure = r.string()?;
    let event = EventPacket {
        event_type,
        seqnum,
        structure,
    };
    Ok((event, base_time))
}

/// Appends an upstream event's payload: type, seqnum, structure.
pub(super) fn encode_upstream_event(ev: &EventPacket, out: &mut Vec<u8>) {
    out.extend_from_slice(&ev.event_type.to_le_bytes());
    out.extend_from_slice(&ev.seqnum.to_le_bytes());
    put_str(out, &ev.structure);
}

pub(super) fn decode_upstream_event(r: &mut Reader<'_>) -> Result<EventPacket, DecodeError> {
    let event_type = r.u32()?;
    let seqnum = r.u32()?;
    let structure = r.string()?;
    Ok(EventPacket {
        event_type,
        seqnum,
        structure,
    })
}

pub(super) fn encode_query(q: &QueryPacket, out: &mut Vec<u8>) {
    out.extend_from_slice(&q.id.to_le_bytes());
    out.extend_from_slice(&q.query_type.to_le_bytes());
    put_str(out, &q.structure);
}

pub(super) fn decode_query(r: &mut Reader<'_>) -> Result<QueryPacket, DecodeError> {
    let id = r.u32()?;
    let query_type = r.u32()?;
    let structure = r.string()?;
    Ok(QueryPacket {
        id,
        query_type,
        structure,
    })
}

pub(super) fn encode_query_reply(reply: &QueryReplyPacket, out: &mut Vec<u8>) {
    out.extend_from_slice(&reply.id.to_le_bytes());
    out.push(reply.answered as u8);
    out.extend_from_slice(&[0, 0, 0]);
    put_str(out, &reply.structure);
}

pub(super) fn decode_query_reply(r: &mut Reader<'_>) -> Result<QueryReplyPacket, DecodeError> {
    let id = r.u32()?;
    let answered = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::NonZeroReserved { what: r.what() }),
    };
    r.reserved(3)?;
    let structure = r.string()?;
    Ok(QueryReplyPacket {
        id,
        answered,
        structure,
    })
}

/// Appends a message's payload: type, the source path's length (u16) and the path, then the
/// structure.
pub(super) fn encode_message(m: &MessagePacket, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if m.source.len() > u16::MAX as usize {
        return Err(EncodeError::TooLarge {
            what: "message source",
            size: m.source.len(),
        });
    }
    out.extend_from_slice(&m.message_type.to_le_bytes());
    out.extend_from_slice(&(m.source.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(m.source.as_bytes());
    put_str(out, &m.structure);
    Ok(())
}

pub(super) fn decode_message(r: &mut Reader<'_>) -> Result<MessagePacket, DecodeError> {
    let message_type = r.u32()?;
    let source_len = r.u16()? as usize;
    r.reserved(2)?;
    let source = r.str_of(source_len)?;
    let structure = r.string()?;
    Ok(MessagePacket {
        message_type,
        source,
        structure,
    })
}

pub(super) fn encode_state(st: &StatePacket, out: &mut Vec<u8>) {
    out.push(st.state);
    out.push(st.sender_follows as u8);
    out.extend_from_slice(&[0, 0]);
}

pub(super) fn decode_state(r: &mut Reader<'_>) -> Result<StatePacket, DecodeError> {
    let state = r.u8()?;
    if !(1..=4).contains(&state) {
        return Err(DecodeError::BadState(state));
    }
    let sender_follows = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::NonZeroReserved { what: r.what() }),
    };
    r.reserved(2)?;
    Ok(StatePacket {
        state,
        sender_follows,
    })
}

/// Appends a preroll report's payload: the last buffer id, the barrier count, 4 reserved bytes.
pub(super) fn encode_prerolled(buffer_id: u64, barriers: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&buffer_id.to_le_bytes());
    out.extend_from_slice(&barriers.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// Reads a preroll report's payload: the last buffer id and the barrier count.
pub(super) fn decode_prerolled(r: &mut Reader<'_>) -> Result<(u64, u32), DecodeError> {
    let buffer_id = r.u64()?;
    let barriers = r.u32()?;
    r.reserved(4)?;
    Ok((buffer_id, barriers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::encoded;
    use crate::protocol::{HEADER_SIZE, Packet};
    use smallvec::smallvec;

    #[test]
    fn state_packet_malformed() {
        let good = encoded(&Packet::<i32>::State(StatePacket {
            state: 4,
            sender_follows: true,
        }));
        assert_eq!(good.len(), HEADER_SIZE + 4);
        for (at, value, want) in [
            (HEADER_SIZE, 0u8, DecodeError::BadState(0)),
            (HEADER_SIZE, 5, DecodeError::BadState(5)),
            (
                HEADER_SIZE + 1,
                2,
                DecodeError::NonZeroReserved { what: "state" },
            ),
            (
                HEADER_SIZE + 3,
                1,
                DecodeError::NonZeroReserved { what: "state" },
            ),
        ] {
            let mut b = good.clone();
            b[at] = value;
            assert_eq!(Packet::<i32>::decode(&b, smallvec![]), Err(want));
        }
        assert!(matches!(
            Packet::<i32>::decode(&good[..HEADER_SIZE + 3], smallvec![]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn control_packets_malformed() {
        let reply = encoded(&Packet::<i32>::QueryReply(QueryReplyPacket {
            id: 1,
            answered: true,
            structure: "x".into(),
        }));
        let mut t = reply.clone();
        t[HEADER_SIZE + 4] = 2;
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::NonZeroReserved { .. })
        ));
        let msg = encoded(&Packet::<i32>::Message(MessagePacket {
            message_type: 2,
            source: "abc".into(),
            structure: String::new(),
        }));
        // A source length past the end of the packet.
        let mut t = msg.clone();
        t[HEADER_SIZE + 4..HEADER_SIZE + 6].copy_from_slice(&100u16.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut t = msg.clone();
        t[HEADER_SIZE + 8] = 0xff;
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::InvalidUtf8 { what: "message" })
        ));
    }
}
