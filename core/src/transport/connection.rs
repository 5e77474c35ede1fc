//! One QUIC connection to a peer: the message stream each way, and the
//! Shipping Lane transfers in flight on it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::{Buf, Bytes};
use quinn_proto::{Dir, StreamId, VarInt};

use super::CLOSE_DUPLICATE;
use super::chunk::{ChunkSource, Incoming, Outgoing, Purpose, SharedDigest, TransferId};
use super::frame::FrameDecoder;

/// One QUIC connection and what rides on it.
pub(crate) struct Connection {
    pub(crate) quinn: quinn_proto::Connection,
    /// The peer: known at dial time for outbound connections, after a valid
    /// hello for inbound ones.
    pub(crate) peer: Option<u64>,
    /// Whether the peer's identity is established (handshake done and, for
    /// inbound connections, a valid hello).
    pub(crate) identified: bool,
    pub(crate) outbound: bool,
    /// Whether the peer's hello arrived (the dialed node sends one too).
    pub(crate) hello_received: bool,
    /// Callers of [`super::Transport::connect`] waiting for this dial to
    /// learn who answers.
    pub(crate) dial_tickets: Vec<u64>,
    pub(crate) send: Option<StreamId>,
    /// Encoded frames not yet taken by QUIC; the front may be a remainder.
    pub(crate) queued: VecDeque<Bytes>,
    pub(crate) front_started: bool,
    pub(crate) queued_bytes: usize,
    pub(crate) receive: Option<(StreamId, FrameDecoder)>,
    pub(crate) timeout: Option<Instant>,
    pub(crate) closing: bool,
    /// A duplicate: no new frames; closed once both streams have ended.
    pub(crate) retiring: bool,
    pub(crate) finish_sent: bool,
    /// Our stream ended and the peer acknowledged all of it.
    pub(crate) sent_all: bool,
    /// The peer's stream ended cleanly.
    pub(crate) received_all: bool,
    /// Transfers waiting for a stream (the peer's stream limit).
    pub(crate) unstarted: VecDeque<PendingTransfer>,
    /// Transfers this node sends, by stream.
    pub(crate) outgoing: BTreeMap<StreamId, Outgoing>,
    /// Transfers this node receives, by stream.
    pub(crate) incoming: BTreeMap<StreamId, Incoming>,
}

/// A transfer asked for but not yet on a stream.
#[derive(Debug)]
pub(crate) struct PendingTransfer {
    pub(crate) transfer: TransferId,
    pub(crate) ticket: Option<u64>,
    pub(crate) source: ChunkSource,
    /// Shared with the transfers of the same body to other peers.
    pub(crate) digest: SharedDigest,
    pub(crate) purpose: Purpose,
}

impl Connection {
    pub(crate) fn new(quinn: quinn_proto::Connection, peer: Option<u64>, outbound: bool) -> Self {
        Self {
            quinn,
            peer,
            identified: false,
            outbound,
            hello_received: false,
            dial_tickets: Vec::new(),
            send: None,
            queued: VecDeque::new(),
            front_started: false,
            queued_bytes: 0,
            receive: None,
            timeout: None,
            closing: false,
            retiring: false,
            finish_sent: false,
            sent_all: false,
            received_all: false,
            unstarted: VecDeque::new(),
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
        }
    }

    pub(crate) fn enqueue(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len();
        self.queued.push_back(frame);
        self.flush();
    }

    /// Hands queued frames to QUIC until flow control pushes back.
    pub(crate) fn flush(&mut self) {
        // A dialer sends its hello before it knows who answered.
        if self.closing || !(self.identified || self.outbound) {
            return;
        }
        if self.send.is_none() {
            self.send = self.quinn.streams().open(Dir::Uni);
        }
        let Some(stream) = self.send else { return };
        while let Some(front) = self.queued.front_mut() {
            match self.quinn.send_stream(stream).write(front) {
                Ok(written) => {
                    self.queued_bytes -= written;
                    if written == front.len() {
                        self.queued.pop_front();
                        self.front_started = false;
                    } else {
                        // Write again: only a write that returns `Blocked`
                        // makes quinn report `Writable` later.
                        front.advance(written);
                        self.front_started = true;
                    }
                }
                // Blocked: wait for `Writable`. Stopped or closed: the
                // connection is closing and reports why.
                Err(_) => break,
            }
        }
        if self.retiring && self.queued.is_empty() && !self.finish_sent {
            self.finish_sent = self.quinn.send_stream(stream).finish().is_ok();
        }
    }

    /// Stops using this duplicate: what is queued but not started goes to
    /// the connection kept; what QUIC has taken is still delivered, then
    /// the stream ends. An empty stream is opened just to end it, so the
    /// peer learns this side is done.
    pub(crate) fn retire(&mut self) -> VecDeque<Bytes> {
        let keep = usize::from(self.front_started);
        let unstarted: VecDeque<Bytes> = self.queued.drain(keep..).collect();
        self.queued_bytes -= unstarted.iter().map(Bytes::len).sum::<usize>();
        self.retiring = true;
        self.flush();
        unstarted
    }

    /// Closes a retired duplicate once nothing is left in flight either way.
    pub(crate) fn close_if_retired(&mut self, now: Instant) {
        let transfers_done =
            self.outgoing.is_empty() && self.incoming.is_empty() && self.unstarted.is_empty();
        if self.retiring && self.sent_all && self.received_all && transfers_done {
            self.close(now, CLOSE_DUPLICATE, "duplicate connection");
        }
    }

    pub(crate) fn close(&mut self, now: Instant, code: u32, reason: &str) {
        if !self.closing {
            self.closing = true;
            self.quinn.close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason.as_bytes()));
        }
    }
}
