//! Node operations over RPC, for clients outside the node's process (the
//! `octopii` command line): a request whose `Custom` operation is one of
//! [`ClientOperation`]'s names goes to the node itself, not to the
//! application's handler, and is answered when done (a proposal once
//! applied). The answer is a `CustomResponse` whose data is a bincode
//! [`ClientReply`].

use core::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::node::NodeStatus;
use crate::raft::NodeError;

/// Operation names are `octopii/<name>`; applications must not use the
/// prefix for their own.
pub const OPERATION_PREFIX: &str = "octopii/";

/// What a client asks the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOperation {
    /// Replicate the data as a command (leader only).
    Propose,
    /// Run the data as a read against the local state machine (its
    /// `query`, which may be stale on a follower).
    Query,
    /// Run the data as a linearizable read (on any member: a follower
    /// asks the leader for the read index).
    Read,
    /// The node's view of the cluster.
    Status,
}

impl ClientOperation {
    /// The operation's name in a `Custom` request.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Propose => "octopii/propose",
            Self::Query => "octopii/query",
            Self::Read => "octopii/read",
            Self::Status => "octopii/status",
        }
    }

    /// The operation named `name`, if it is one.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Propose, Self::Query, Self::Read, Self::Status].into_iter().find(|op| op.name() == name)
    }
}

/// The node's answer to a client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The state machine's answer.
    Applied(Bytes),
    /// The state machine refused the command, with its message.
    Rejected(String),
    /// Ask the leader instead: its id and, if this node knows it, where
    /// it listens.
    NotLeader {
        /// The leader's id, if known.
        leader: Option<u64>,
        /// Its address, if known.
        address: Option<SocketAddr>,
    },
    /// The operation failed, with why.
    Failed(String),
    /// The node's view of the cluster.
    Status(NodeStatus),
    /// Not an operation this node knows.
    Unknown(String),
}

impl ClientReply {
    /// The reply for a node's answer; `leader_address` resolves a
    /// not-leader answer's leader id.
    pub(crate) fn from_result(
        result: Result<Result<Bytes, String>, NodeError>,
        leader_address: impl FnOnce(u64) -> Option<SocketAddr>,
    ) -> Self {
        match result {
            Ok(Ok(answer)) => Self::Applied(answer),
            Ok(Err(message)) => Self::Rejected(message),
            Err(NodeError::NotLeader { leader }) => {
                Self::NotLeader { leader, address: leader.and_then(leader_address) }
            }
            Err(error) => Self::Failed(error.to_string()),
        }
    }

    /// Encoded as a response's data.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map(Bytes::from)
            .expect("a client reply always encodes")
    }

    /// Decodes a response's data.
    ///
    /// # Errors
    ///
    /// Bytes that are not a reply.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let config = bincode::config::standard().with_limit::<{ 16 * 1024 * 1024 }>();
        bincode::serde::decode_from_slice(data, config)
            .map(|(reply, _)| reply)
            .map_err(|error| error.to_string())
    }
}
