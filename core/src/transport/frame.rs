//! Frames: how messages between two nodes are cut out of a QUIC stream.
//!
//! ```text
//! 0        4      5
//! +--------+------+------------------------+
//! | length | kind | body (length bytes)    |
//! | u32 BE | u8   |                        |
//! +--------+------+------------------------+
//! ```
//!
//! | kind | frame      | body                                             |
//! |------|------------|--------------------------------------------------|
//! | 1    | `Hello`    | the dialing node's id, u64 BE                     |
//! | 2    | `Raft`     | a protobuf-encoded Raft message                   |
//! | 3    | `Request`  | message id u64 BE, then a bincode `RequestPayload` |
//! | 4    | `Response` | message id u64 BE, then a bincode `ResponsePayload` |
//! | 5    | `OneWay`   | a bincode `OneWayMessage`                         |
//! | 6    | `Data`     | opaque bytes                                      |
//!
//! The decoder never trusts a length: one above [`FRAME_BYTES_MAX`] is an
//! error as soon as the five header bytes are in, and the buffer only ever
//! holds bytes that have actually arrived.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::rpc::{MessageId, OneWayMessage, RequestPayload, ResponsePayload};

/// Bytes before a frame's body.
pub const FRAME_HEADER_BYTES: usize = 5;
/// The largest frame body accepted: room for the largest Raft message.
pub const FRAME_BYTES_MAX: usize = crate::raft::MESSAGE_BYTES_MAX + 64;

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_RESPONSE: u8 = 4;
const KIND_ONE_WAY: u8 = 5;
const KIND_DATA: u8 = 6;

/// One message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The first frame of a dialing node: who it claims to be. The claim is
    /// checked against its certificate.
    Hello {
        /// The dialing node's id.
        node_id: u64,
    },
    /// A Raft message.
    Raft(Bytes),
    /// An RPC request.
    Request {
        /// Echoed in the response.
        id: MessageId,
        /// What is asked.
        payload: RequestPayload,
    },
    /// The answer to a request.
    Response {
        /// The request answered.
        id: MessageId,
        /// The answer.
        payload: ResponsePayload,
    },
    /// A message that expects no answer.
    OneWay(OneWayMessage),
    /// Opaque application bytes.
    Data(Bytes),
}

/// Why bytes from a peer are not a frame. Each one closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces a body above [`FRAME_BYTES_MAX`].
    #[error("frame of {length} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// The announced body length.
        length: u64,
        /// The limit.
        max: usize,
    },
    /// The kind byte is unknown.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body does not hold what its kind requires.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The stream ended inside a frame.
    #[error("stream ended {buffered} bytes into a frame")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_big_endian().with_fixed_int_encoding().with_limit::<FRAME_BYTES_MAX>()
}

impl Frame {
    /// The frame as bytes, header included.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let (kind, body) = match self {
            Frame::Hello { node_id } => (KIND_HELLO, Bytes::copy_from_slice(&node_id.to_be_bytes())),
            Frame::Raft(message) => (KIND_RAFT, message.clone()),
            Frame::Request { id, payload } => (KIND_REQUEST, encode_with_id(*id, payload)),
            Frame::Response { id, payload } => (KIND_RESPONSE, encode_with_id(*id, payload)),
            Frame::OneWay(message) => (KIND_ONE_WAY, encode_with_id_opt(None, message)),
            Frame::Data(data) => (KIND_DATA, data.clone()),
        };
        let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + body.len());
        out.put_u32(u32::try_from(body.len()).expect("frame bodies are bounded by FRAME_BYTES_MAX"));
        out.put_u8(kind);
        out.put_slice(&body);
        out.freeze()
    }

    fn decode(kind: u8, mut body: Bytes) -> Result<Self, FrameError> {
        match kind {
            KIND_HELLO => {
                let bytes: [u8; 8] =
                    body[..].try_into().map_err(|_| malformed("hello", "body is not 8 bytes"))?;
                Ok(Frame::Hello { node_id: u64::from_be_bytes(bytes) })
            }
            KIND_RAFT => Ok(Frame::Raft(body)),
            KIND_REQUEST | KIND_RESPONSE => {
                let name = if kind == KIND_REQUEST { "request" } else { "response" };
                if body.len() < 8 {
                    return Err(malformed(name, "no message id"));
                }
                let id = MessageId(body.get_u64());
                if kind == KIND_REQUEST {
                    Ok(Frame::Request { id, payload: decode_body(name, &body)? })
                } else {
                    Ok(Frame::Response { id, payload: decode_body(name, &body)? })
                }
            }
            KIND_ONE_WAY => Ok(Frame::OneWay(decode_body("one-way", &body)?)),
            KIND_DATA => Ok(Frame::Data(body)),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

fn encode_with_id(id: MessageId, value: &impl serde::Serialize) -> Bytes {
    encode_with_id_opt(Some(id), value)
}

fn encode_with_id_opt(id: Option<MessageId>, value: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::new();
    if let Some(id) = id {
        out.extend_from_slice(&id.0.to_be_bytes());
    }
    bincode::serde::encode_into_std_write(value, &mut out, bincode_config())
        .expect("encoding into memory cannot fail");
    out.into()
}

fn decode_body<T: serde::de::DeserializeOwned>(kind: &'static str, body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|error| malformed(kind, &error.to_string()))?;
    if used != body.len() {
        return Err(malformed(kind, &format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

fn malformed(kind: &'static str, reason: &str) -> FrameError {
    FrameError::Malformed { kind, reason: reason.to_owned() }
}

/// Cuts frames out of a byte stream that arrives in pieces of any size.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Adds bytes that arrived. Call [`FrameDecoder::next_frame`] until it
    /// returns `Ok(None)` after each push, so the buffer never holds more
    /// than one frame plus one push.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// The bytes are not a valid frame; the stream cannot be resynchronized.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let length = u32::from_be_bytes(self.buffer[..4].try_into().expect("four bytes checked above"));
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { length: length as u64, max: FRAME_BYTES_MAX });
        }
        let kind = self.buffer[4];
        if !(KIND_HELLO..=KIND_DATA).contains(&kind) {
            return Err(FrameError::UnknownKind(kind));
        }
        if self.buffer.len() < FRAME_HEADER_BYTES + length {
            return Ok(None);
        }
        self.buffer.advance(FRAME_HEADER_BYTES);
        let body = self.buffer.split_to(length).freeze();
        Frame::decode(kind, body).map(Some)
    }

    /// The stream ended: an error if it ended inside a frame.
    ///
    /// # Errors
    ///
    /// [`FrameError::Truncated`] when bytes of an unfinished frame remain.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffer.len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], piece: usize) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame()? {
                frames.push(frame);
            }
        }
        decoder.finish()?;
        Ok(frames)
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello { node_id: u64::MAX },
            Frame::Raft(Bytes::from_static(b"raft bytes")),
            Frame::Request {
                id: MessageId(7),
                payload: RequestPayload::Custom { operation: "echo".into(), data: Bytes::from_static(b"hi") },
            },
            Frame::Response {
                id: MessageId(7),
                payload: ResponsePayload::CustomResponse { success: true, data: Bytes::new() },
            },
            Frame::OneWay(OneWayMessage::Heartbeat { node_id: 3, timestamp: 99 }),
            Frame::Data(Bytes::new()),
        ]
    }

    #[test]
    fn frames_round_trip_whatever_the_piece_size() {
        let frames = samples();
        let bytes: Vec<u8> = frames.iter().flat_map(|frame| frame.encode().to_vec()).collect();
        for piece in [1, 2, 5, 7, 64, bytes.len()] {
            assert_eq!(decode_all(&bytes, piece).unwrap(), frames, "piece size {piece}");
        }
    }

    #[test]
    fn a_huge_length_is_refused_from_the_header_alone() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0xff, 0xff, 0xff, 0xff, KIND_DATA]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { length: u64::from(u32::MAX), max: FRAME_BYTES_MAX })
        );
        assert_eq!(decoder.buffered(), FRAME_HEADER_BYTES, "nothing was reserved for the claimed length");
    }

    #[test]
    fn bad_input_is_an_error() {
        let check = |bytes: &[u8], expected: FrameError| {
            assert_eq!(decode_all(bytes, bytes.len()), Err(expected), "{bytes:?}");
        };
        check(&[0, 0, 0, 0, 9], FrameError::UnknownKind(9));
        check(&[0, 0, 0, 3, KIND_HELLO, 1, 2, 3], malformed("hello", "body is not 8 bytes"));
        check(&[0, 0, 0, 2, KIND_REQUEST, 1, 2], malformed("request", "no message id"));
        check(&[0, 0, 0, 4, KIND_DATA, 1], FrameError::Truncated { buffered: 6 });
        let mut one_way =
            Frame::OneWay(OneWayMessage::Heartbeat { node_id: 1, timestamp: 2 }).encode().to_vec();
        one_way[3] += 1;
        one_way.push(0);
        check(&one_way, malformed("one-way", "1 trailing bytes"));
        let garbage = [0, 0, 0, 9, KIND_ONE_WAY, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode_all(&garbage, 3), Err(FrameError::Malformed { kind: "one-way", .. })));
    }
}
