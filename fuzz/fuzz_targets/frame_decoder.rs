//! Fuzzes the frame decoder (`FrameDecoder`) with encoder-written frames,
//! edited and followed by arbitrary bytes, pushed in pieces of arbitrary
//! sizes.
//!
//! Each input is decoded twice, in pieces and in one push, and both must
//! give the same frames and the same first error. Along the way the decoder
//! must keep the invariants in [`decode`]: it buffers exactly the bytes not
//! yet returned as frames, never more than one frame plus one push, and
//! answers `Ok(None)` only when no whole frame is buffered. Every frame
//! returned re-encodes to the bytes it was cut from, and decodes back to
//! itself.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use octopii_core::transport::frame::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, Frame, FrameDecoder, FrameError};
use octopii_core::transport::rpc::{MessageId, OneWayMessage, RequestPayload, ResponsePayload};

/// Most encoder-written frames and edits an input builds.
const FRAMES_MAX: usize = 8;
const EDITS_MAX: usize = 8;

#[derive(Arbitrary, Debug)]
struct FrameInput {
    /// Frames the encoder writes first, so decoding reaches past one frame.
    frames: Vec<FrameShape>,
    /// Overwrite the byte at this index (modulo the length) with this value.
    edits: Vec<(u16, u8)>,
    /// Sizes of the pieces pushed, in turn; what is left goes in one last
    /// push. A zero is an empty push.
    pieces: Vec<u8>,
    /// Any bytes, after the frames.
    bytes: Vec<u8>,
}

/// Every frame kind, and every payload variant.
#[derive(Arbitrary, Debug)]
enum FrameShape {
    Hello(u64),
    Raft(Vec<u8>),
    RaftMessageRequest { id: u64, message: Vec<u8> },
    OpenRaftRequest { id: u64, kind: String, data: Vec<u8> },
    CustomRequest { id: u64, operation: String, data: Vec<u8> },
    AppendEntriesResponse { id: u64, term: u64, success: bool },
    RequestVoteResponse { id: u64, term: u64, vote_granted: bool },
    SnapshotResponse { id: u64, term: u64, success: bool },
    OpenRaftResponse { id: u64, kind: String, data: Vec<u8> },
    CustomResponse { id: u64, success: bool, data: Vec<u8> },
    ErrorResponse { id: u64, message: String },
    Heartbeat { node_id: u64, timestamp: u64 },
    CustomOneWay { operation: String, data: Vec<u8> },
    Data(Vec<u8>),
}

impl FrameShape {
    fn frame(self) -> Frame {
        let request = |id, payload| Frame::Request { id: MessageId(id), payload };
        let response = |id, payload| Frame::Response { id: MessageId(id), payload };
        match self {
            FrameShape::Hello(node_id) => Frame::Hello { node_id },
            FrameShape::Raft(message) => Frame::Raft(message.into()),
            FrameShape::RaftMessageRequest { id, message } => {
                request(id, RequestPayload::RaftMessage { message: message.into() })
            }
            FrameShape::OpenRaftRequest { id, kind, data } => {
                request(id, RequestPayload::OpenRaft { kind, data: data.into() })
            }
            FrameShape::CustomRequest { id, operation, data } => {
                request(id, RequestPayload::Custom { operation, data: data.into() })
            }
            FrameShape::AppendEntriesResponse { id, term, success } => {
                response(id, ResponsePayload::AppendEntriesResponse { term, success })
            }
            FrameShape::RequestVoteResponse { id, term, vote_granted } => {
                response(id, ResponsePayload::RequestVoteResponse { term, vote_granted })
            }
            FrameShape::SnapshotResponse { id, term, success } => {
                response(id, ResponsePayload::SnapshotResponse { term, success })
            }
            FrameShape::OpenRaftResponse { id, kind, data } => {
                response(id, ResponsePayload::OpenRaft { kind, data: data.into() })
            }
            FrameShape::CustomResponse { id, success, data } => {
                response(id, ResponsePayload::CustomResponse { success, data: data.into() })
            }
            FrameShape::ErrorResponse { id, message } => response(id, ResponsePayload::Error { message }),
            FrameShape::Heartbeat { node_id, timestamp } => {
                Frame::OneWay(OneWayMessage::Heartbeat { node_id, timestamp })
            }
            FrameShape::CustomOneWay { operation, data } => {
                Frame::OneWay(OneWayMessage::Custom { operation, data: data.into() })
            }
            FrameShape::Data(data) => Frame::Data(data.into()),
        }
    }
}

/// The frames decoded, then the first error (from `next_frame` or `finish`).
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<FrameError>,
}

/// The body length a frame header at `at` announces.
fn announced_length(bytes: &[u8], at: usize) -> usize {
    let header: [u8; 4] = bytes[at..at + 4].try_into().expect("a four-byte slice");
    u32::from_be_bytes(header) as usize
}

/// Decodes `bytes` pushed in `pieces` (sizes in turn, then the rest),
/// draining frames after every push as the decoder asks.
fn decode(bytes: &[u8], pieces: &[u8]) -> Decoded {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    // Bytes pushed, and bytes returned as whole frames (headers included).
    let (mut pushed, mut consumed) = (0, 0);
    let sizes = pieces.iter().map(|&size| usize::from(size)).chain([usize::MAX]);
    for size in sizes {
        let piece = &bytes[pushed..pushed + size.min(bytes.len() - pushed)];
        decoder.push(piece);
        pushed += piece.len();
        assert!(
            decoder.buffered() <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX + piece.len(),
            "{} bytes buffered after a push of {}",
            decoder.buffered(),
            piece.len()
        );
        assert_eq!(decoder.buffered(), pushed - consumed, "the decoder buffers what it has not returned");
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let start = consumed;
                    consumed += FRAME_HEADER_BYTES + announced_length(bytes, start);
                    assert_eq!(decoder.buffered(), pushed - consumed, "a frame takes its header and body");
                    check_round_trip(&frame, &bytes[start..consumed]);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => return Decoded { frames, error: Some(error) },
            }
        }
        let buffered = decoder.buffered();
        assert!(
            buffered < FRAME_HEADER_BYTES
                || buffered < FRAME_HEADER_BYTES + announced_length(bytes, consumed),
            "Ok(None) with a whole frame of {buffered} bytes buffered"
        );
        if pushed == bytes.len() {
            break;
        }
    }
    Decoded { frames, error: decoder.finish().err() }
}

/// A decoded frame re-encodes to the bytes it came from, and those decode
/// back to the same frame.
fn check_round_trip(frame: &Frame, source: &[u8]) {
    let encoded = frame.encode();
    assert_eq!(&encoded[..], source, "{frame:?} re-encodes to other bytes than it came from");
    let mut decoder = FrameDecoder::new();
    decoder.push(&encoded);
    assert_eq!(decoder.next_frame().as_ref(), Ok(&Some(frame.clone())), "{frame:?} does not decode back");
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.finish(), Ok(()));
}

fuzz_target!(|input: FrameInput| {
    let mut bytes = Vec::new();
    for shape in input.frames.into_iter().take(FRAMES_MAX) {
        bytes.extend_from_slice(&shape.frame().encode());
    }
    if !bytes.is_empty() {
        for &(index, value) in input.edits.iter().take(EDITS_MAX) {
            let len = bytes.len();
            bytes[usize::from(index) % len] = value;
        }
    }
    bytes.extend_from_slice(&input.bytes);
    let in_pieces = decode(&bytes, &input.pieces);
    let whole = decode(&bytes, &[]);
    assert_eq!(in_pieces, whole, "pieces {:?} change what is decoded", input.pieces);
});
