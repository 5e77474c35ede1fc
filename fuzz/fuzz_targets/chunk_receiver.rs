//! Fuzzes the Shipping Lane receiver's parsing (`ChunkDecoder`) with
//! arbitrary bytes, and with transfers built here (header, body, SHA-256 of
//! the body) that are then sent whole, with a body byte flipped, cut short
//! or followed by a stray byte. Every input is pushed in pieces of arbitrary
//! sizes.
//!
//! Each input is decoded twice, in pieces and in one push, and both must give
//! the same events and outcome. Along the way the decoder must keep the
//! invariants in [`decode`]: it holds no more than about the bytes pushed,
//! whatever size the header announces; it starts once, before any body; it
//! hands on no more body than announced; and a failed decoder stays failed.
//! A well-formed transfer is accepted with its size and body; with a flipped
//! body byte it is a checksum mismatch.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use octopii_core::transport::chunk::{CHUNK_HEADER_BYTES, ChunkDecoder, ChunkEvent, Purpose, TransferError};
use sha2::{Digest, Sha256};

/// Slack the Raft body may hold beyond twice the bytes pushed: a growing
/// `Vec` at most doubles, and starts at a few bytes.
const HELD_BYTES_SLACK: usize = 64;

#[derive(Arbitrary, Debug)]
enum ChunkInput {
    /// Any bytes, with any limit.
    Raw { size_max: u64, pieces: Vec<u8>, bytes: Vec<u8> },
    /// A transfer built here.
    Built {
        raft: bool,
        /// The limit is the body's size plus this.
        size_max_slack: u16,
        /// Flip the bits of `mask` (made non-zero) in the body byte at this
        /// index (modulo the length).
        flip: (u16, u8),
        /// Cut the transfer to this length (modulo its length).
        cut: u16,
        pieces: Vec<u8>,
        body: Vec<u8>,
    },
}

/// What decoding produced.
#[derive(Debug, PartialEq)]
struct Decoded {
    /// The size from the `Started` event.
    started: Option<u64>,
    /// The application body, from the `Data` events.
    data: Vec<u8>,
    /// The Raft body, taken after `finish`.
    raft: Option<Bytes>,
    /// What `finish` said.
    outcome: Option<Result<u64, TransferError>>,
    purpose: Purpose,
    complete: bool,
}

/// Decodes `bytes` pushed in `pieces` (sizes in turn, then the rest).
fn decode(bytes: &[u8], pieces: &[u8], size_max: u64) -> Decoded {
    let mut decoder = ChunkDecoder::new(size_max);
    let mut events = Vec::new();
    let mut pushed = 0;
    let sizes = pieces.iter().map(|&size| usize::from(size)).chain([usize::MAX]);
    for size in sizes {
        let piece = &bytes[pushed..pushed + size.min(bytes.len() - pushed)];
        pushed += piece.len();
        let result = decoder.push(Bytes::copy_from_slice(piece), &mut events);
        assert!(
            decoder.held_bytes() <= 2 * pushed + HELD_BYTES_SLACK,
            "holds {} bytes after {pushed} pushed",
            decoder.held_bytes()
        );
        if let Err(error) = result {
            let mut later = Vec::new();
            assert_eq!(
                decoder.push(Bytes::new(), &mut later),
                Err(error.clone()),
                "a failed decoder stays failed"
            );
            assert!(later.is_empty());
            assert_eq!(decoder.finish(), Some(Err(error)));
            break;
        }
        if pushed == bytes.len() {
            break;
        }
    }
    let outcome = decoder.finish();
    assert_eq!(decoder.finish(), outcome, "finish says the same each time");
    let complete = decoder.is_complete();
    if complete {
        assert!(outcome.is_some(), "a complete transfer has an outcome");
    }
    let purpose = decoder.purpose();
    let raft = decoder.take_raft_body();
    assert_eq!(decoder.take_raft_body(), None, "the raft body is taken once");
    let mut decoded = Decoded { started: None, data: Vec::new(), raft, outcome, purpose, complete };
    for event in events {
        match event {
            ChunkEvent::Started { size } => {
                assert!(decoded.started.is_none() && decoded.data.is_empty(), "started comes once, first");
                decoded.started = Some(size);
            }
            ChunkEvent::Data(data) => {
                assert!(decoded.started.is_some(), "data before the header");
                assert!(!data.is_empty(), "an empty data event");
                decoded.data.extend_from_slice(&data);
            }
        }
    }
    let announced = decoded.started.unwrap_or(0);
    assert!(decoded.data.len() as u64 <= announced, "more body than announced: {decoded:?}");
    if decoded.purpose == Purpose::Raft {
        assert!(decoded.data.is_empty(), "a raft body is handed on piece by piece");
    }
    match &decoded.outcome {
        Some(Ok(size)) => {
            assert_eq!(decoded.started, Some(*size));
            let body = decoded.raft.as_ref().map_or(decoded.data.len(), Bytes::len);
            assert_eq!(body as u64, *size, "the verified body has the announced size");
            assert_eq!(decoded.raft.is_some(), decoded.purpose == Purpose::Raft);
        }
        _ => assert_eq!(decoded.raft, None, "an unverified raft body is handed on"),
    }
    decoded
}

/// Decodes in pieces and whole, which must agree.
fn decode_both(bytes: &[u8], pieces: &[u8], size_max: u64) -> Decoded {
    let in_pieces = decode(bytes, pieces, size_max);
    assert_eq!(in_pieces, decode(bytes, &[], size_max), "pieces {pieces:?} change what is decoded");
    in_pieces
}

fn encode(purpose: Purpose, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![purpose as u8];
    bytes.extend_from_slice(&(body.len() as u64).to_be_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&Sha256::digest(body));
    bytes
}

fuzz_target!(|input: ChunkInput| match input {
    ChunkInput::Raw { size_max, pieces, bytes } => {
        decode_both(&bytes, &pieces, size_max);
    }
    ChunkInput::Built { raft, size_max_slack, flip, cut, pieces, body } => {
        let purpose = if raft { Purpose::Raft } else { Purpose::Application };
        let size = body.len() as u64;
        let size_max = size + u64::from(size_max_slack);
        let bytes = encode(purpose, &body);

        let decoded = decode_both(&bytes, &pieces, size_max);
        assert_eq!(decoded.outcome, Some(Ok(size)), "a well-formed transfer is refused");
        assert_eq!(decoded.purpose, purpose);
        match purpose {
            Purpose::Application => assert_eq!(decoded.data, body),
            Purpose::Raft => assert_eq!(decoded.raft.as_deref(), Some(&body[..])),
        }

        if !body.is_empty() {
            let mut flipped = bytes.clone();
            flipped[CHUNK_HEADER_BYTES + usize::from(flip.0) % body.len()] ^= flip.1.max(1);
            let decoded = decode_both(&flipped, &pieces, size_max);
            assert_eq!(decoded.outcome, Some(Err(TransferError::ChecksumMismatch)), "a flipped body byte");
            if purpose == Purpose::Application {
                assert_eq!(decoded.data.len(), body.len(), "the body is handed on before the digest");
            }
            let refused = decode_both(&bytes, &pieces, size - 1);
            let expected = match purpose {
                Purpose::Application => Err(TransferError::TooLarge { size, max: size - 1 }),
                Purpose::Raft => Ok(size),
            };
            assert_eq!(refused.outcome, Some(expected), "the limit applies to application bodies only");
        }

        let short = &bytes[..usize::from(cut) % bytes.len()];
        let decoded = decode_both(short, &pieces, size_max);
        assert_eq!(decoded.outcome, None, "a transfer cut at {} of {} bytes", short.len(), bytes.len());
        assert!(!decoded.complete);

        let mut long = bytes;
        long.push(0);
        let decoded = decode_both(&long, &pieces, size_max);
        assert_eq!(decoded.outcome, Some(Err(TransferError::Malformed("bytes after the digest".into()))));
    }
});
