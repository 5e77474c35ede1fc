//! RPC between nodes: requests matched to responses by a message id, with a
//! deadline each; one-way messages; the user's request handler.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Matches a response to its request; unique per sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u64);

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestPayload {
    /// An encoded Raft message (kept for the spec's callers; nodes carry
    /// Raft on their own frames).
    RaftMessage {
        /// The encoded message.
        message: Bytes,
    },
    /// A message of another Raft implementation, by kind.
    OpenRaft {
        /// What the data is.
        kind: String,
        /// The encoded message.
        data: Bytes,
    },
    /// An application operation.
    Custom {
        /// The operation's name.
        operation: String,
        /// Its argument.
        data: Bytes,
    },
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponsePayload {
    /// Answer to an append.
    AppendEntriesResponse {
        /// The responder's term.
        term: u64,
        /// Whether the entries were accepted.
        success: bool,
    },
    /// Answer to a vote request.
    RequestVoteResponse {
        /// The responder's term.
        term: u64,
        /// Whether the vote was granted.
        vote_granted: bool,
    },
    /// Answer to a snapshot.
    SnapshotResponse {
        /// The responder's term.
        term: u64,
        /// Whether the snapshot was installed.
        success: bool,
    },
    /// A message of another Raft implementation, by kind.
    OpenRaft {
        /// What the data is.
        kind: String,
        /// The encoded message.
        data: Bytes,
    },
    /// The answer to a [`RequestPayload::Custom`].
    CustomResponse {
        /// Whether the operation succeeded.
        success: bool,
        /// Its result.
        data: Bytes,
    },
    /// The request could not be served.
    Error {
        /// Why.
        message: String,
    },
}

/// A message that expects no answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OneWayMessage {
    /// "I am alive."
    Heartbeat {
        /// The sender.
        node_id: u64,
        /// The sender's clock, in its own unit.
        timestamp: u64,
    },
    /// An application message.
    Custom {
        /// The operation's name.
        operation: String,
        /// Its argument.
        data: Bytes,
    },
}

/// A request as the handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcRequest {
    /// The request's id.
    pub message_id: MessageId,
    /// The node that sent it (authenticated by its certificate).
    pub from: u64,
    /// What is asked.
    pub payload: RequestPayload,
}

/// A response as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcResponse {
    /// The id of the request answered.
    pub message_id: MessageId,
    /// The answer.
    pub payload: ResponsePayload,
}

/// Why a request, one-way message or data send failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No answer before the request's deadline.
    #[error("no response within {timeout_ms} ms")]
    TimedOut {
        /// The deadline, from the request.
        timeout_ms: u64,
    },
    /// The connection to the peer was lost (or could not be made) while the
    /// request was pending.
    #[error("connection to node {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer.
        peer: u64,
        /// Why.
        reason: String,
    },
    /// No address is known for this node id.
    #[error("no address known for node {0}")]
    UnknownPeer(u64),
    /// Too much is already queued for this peer.
    #[error("send queue to node {0} is full")]
    QueueFull(u64),
    /// The message exceeds the frame limit.
    #[error("message of {bytes} bytes exceeds the {max} byte frame limit")]
    TooLarge {
        /// The encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// This node runs no transport.
    #[error("this node has no transport configured")]
    NoTransport,
    /// The transport is shutting down.
    #[error("transport is shutting down")]
    ShuttingDown,
    /// A failure an application describes in words (built with `From`
    /// from a string, for errors of its own).
    #[error("{0}")]
    Other(String),
    /// No node at this address could be reached or proved its identity.
    #[error("cannot connect to {address}: {reason}")]
    Unreachable {
        /// The address dialed.
        address: core::net::SocketAddr,
        /// Why.
        reason: String,
    },
}

/// The user's handler for incoming requests; it runs on the node's loop, so
/// it should answer quickly.
pub struct RequestHandler(Box<dyn Fn(RpcRequest) -> ResponsePayload + Send>);

impl RequestHandler {
    /// Wraps a handler.
    pub fn new(handler: impl Fn(RpcRequest) -> ResponsePayload + Send + 'static) -> Self {
        Self(Box::new(handler))
    }

    /// Runs the handler.
    #[must_use]
    pub fn call(&self, request: RpcRequest) -> ResponsePayload {
        (self.0)(request)
    }
}

impl fmt::Debug for RequestHandler {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("RequestHandler")
    }
}

impl From<&str> for RpcError {
    fn from(message: &str) -> Self {
        Self::Other(message.to_owned())
    }
}

impl From<String> for RpcError {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}
