//! The node's network: a quinn-proto QUIC endpoint with mutual TLS, one
//! connection per peer, framed messages, RPC.
//!
//! [`Transport`] is sans-IO like the rest of the core. Feed it datagrams
//! with [`Transport::handle_datagrams`] and timeouts with
//! [`Transport::handle_timeout`]; drain [`Transport::poll_output`] after
//! every input; send [`TransportOutput::Transmit`] datagrams from the UDP
//! socket; wake it at [`Transport::poll_timeout`].
//!
//! Each connection carries one unidirectional stream per direction. Each
//! side's first frame is [`frame::Frame::Hello`] with its node id, which
//! must match the certificate rustls has already verified against the
//! cluster CA: the dialing node sends it at once, the dialed node once it
//! has checked the dialer's. A node dialed by id is also checked by rustls
//! (the dialer asks for [`tls::node_name`] of that id); a node dialed by
//! address ([`Transport::connect`]) is known by its hello. When both nodes
//! dial each other at once, both keep the connection dialed by the lower
//! id. Every random value quinn-proto needs comes from
//! [`TransportConfig::seed`], so a run is replayable from it.

pub mod chunk;
mod connection;
pub mod frame;
pub mod rpc;
pub mod tls;

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectionHandle, ConnectionId, ConnectionIdGenerator, DatagramEvent, Dir, Endpoint,
    EndpointConfig, ServerConfig, StreamEvent, StreamId, VarInt,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use self::chunk::{
    ChunkSource, FileRead, Incoming, Outgoing, Purpose, Received, SharedDigest, TransferError, TransferId,
    TransferReport,
};
use self::connection::{Connection, PendingTransfer};
use self::frame::{FRAME_BYTES_MAX, Frame, FrameDecoder, FrameError};
use self::rpc::{MessageId, OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError};
use self::rpc::{RpcRequest, RpcResponse};
use self::tls::{TlsError, TlsIdentity};
use crate::disk::IoError;

/// Frames held for a peer while its connection is being made; beyond it,
/// Raft messages are dropped (Raft resends) and requests fail.
pub const WAITING_FRAMES_MAX: usize = 1024;
/// Bytes queued on one connection beyond what QUIC flow control has taken;
/// beyond it, Raft messages are dropped and requests fail.
pub const QUEUED_BYTES_MAX: usize = 2 * FRAME_BYTES_MAX;
/// Raft messages above this size ride a Shipping Lane stream of their own
/// instead of the message stream, so a snapshot does not hold up
/// heartbeats.
pub const RAFT_INLINE_BYTES_MAX: usize = 1024 * 1024;
/// Transfers a peer may run towards this node at once.
pub const CONCURRENT_TRANSFERS_MAX: u32 = 64;
/// Bytes of Raft bodies (large messages, snapshots) a node receives at
/// once, counted by their announced sizes: a Raft transfer that does not fit
/// waits, its sender held back by flow control, until one ends.
pub const RAFT_RECEIVING_BYTES_MAX: u64 = 4 * crate::raft::MESSAGE_BYTES_MAX as u64;
/// Largest piece read from a stream at once.
const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Transmits from this size up are handed on in quinn's buffer rather than
/// copied: copying them costs more than allocating the next buffer.
const TRANSMIT_MOVE_BYTES_MIN: usize = 4096;

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
/// [`TransportConfig::mtu_max`] by default: a 9000-byte jumbo frame less
/// IPv6 and UDP headers.
pub const MTU_MAX_DEFAULT: u16 = 8952;
/// The values [`TransportConfig::mtu_max`] may take: from the UDP payload
/// every connection starts with (QUIC's minimum) to the largest over IPv6.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 1200..=65_527;
/// The largest UDP payload over IPv4 (its header is 20 bytes longer).
const UDP_PAYLOAD_IPV4_MAX: usize = 65_507;

const CLOSE_PROTOCOL: u32 = 1;
pub(crate) const CLOSE_DUPLICATE: u32 = 2;
const CLOSE_IDENTITY: u32 = 3;

/// Everything a transport needs.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id; its certificate must name it.
    pub node_id: u64,
    /// Where each peer listens. More can be added with
    /// [`Transport::update_peer_addr`].
    pub peers: BTreeMap<u64, SocketAddr>,
    /// The cluster CA, this node's certificate and key.
    pub identity: TlsIdentity,
    /// The cryptography: `rustls::crypto::ring::default_provider()` in
    /// production, a seeded one in the simulator.
    pub crypto: Arc<rustls::crypto::CryptoProvider>,
    /// Wall-clock time for certificate validity checks.
    pub time: Arc<dyn rustls::time_provider::TimeProvider>,
    /// Seeds every random choice of QUIC. Must differ between two starts of
    /// the same node (draw it from the OS in production).
    pub seed: [u8; 32],
    /// A connection with no packet for this long is lost. Default 10 s.
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets on an idle connection. Default 1 s.
    pub keep_alive_interval: Duration,
    /// First delay before dialing a peer again after a failure; it doubles
    /// up to [`TransportConfig::reconnect_delay_max`]. Default 20 ms.
    pub reconnect_delay_min: Duration,
    /// Longest delay between dials. Default 2 s.
    pub reconnect_delay_max: Duration,
    /// Datagrams one [`Transmit`] may carry (the socket's GSO segment
    /// count). Default 1. Fewer are sent together when their sizes would
    /// pass one UDP payload.
    pub max_transmit_segments: usize,
    /// Largest UDP payload path MTU discovery tries, within [`MTU_RANGE`].
    /// Each connection starts at 1200 bytes and probes upwards; a size the
    /// path drops is not used, so a high bound is safe on any network and
    /// pays where the path allows it (jumbo frames, loopback). Default
    /// [`MTU_MAX_DEFAULT`].
    pub mtu_max: u16,
    /// Whether the socket may fragment datagrams (it cannot set the
    /// don't-fragment flag): path MTU discovery is then off, since a path
    /// that fragments would pass every probe. Bindings set it from
    /// quinn-udp's `may_fragment`. Default false.
    pub datagrams_may_fragment: bool,
    /// Largest transfer body accepted from a peer. Default 1 TiB.
    pub chunk_bytes_max: u64,
    /// How much of what peers send may wait for the application.
    /// Default [`DeliveryBudget::Pieces`] of 64 MiB.
    pub delivery_budget: DeliveryBudget,
    /// Whether each peer that dials this node and proves its identity is
    /// announced with [`Delivery::Connected`] (for an application that
    /// accepts connections). Default false.
    pub announce_inbound: bool,
    /// Whether data, one-way messages and application transfers from peers
    /// are delivered. A node whose application has no way to read them
    /// sets false: messages are dropped (counted in
    /// [`TransportStats::messages_dropped`]) and transfers refused, so a
    /// peer can neither fill the delivery budget nor, by filling it, hold
    /// back Raft. Default true.
    pub application_deliveries: bool,
}

/// How many bytes of deliveries a node lets wait for the application,
/// handed out and not yet reported taken ([`Transport::deliveries_taken`]),
/// counted as [`Delivery::room`] says: pieces of transfer bodies up to the
/// budget, and data and one-way messages up to the same amount apart.
/// Once pieces fill it, a node reads no more of its peers' transfers; once
/// messages do, no more of their message streams (Raft messages and
/// requests ride there, and wait too). QUIC's flow control holds the
/// senders back until the application takes what it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryBudget {
    /// No limit, for pieces or messages: for a reader that takes
    /// everything as it comes.
    Unlimited,
    /// At most this many bytes of pieces not yet taken, for a reader that
    /// consumes bodies piece by piece (into a file, say): transfers are
    /// read a piece at a time while there is room.
    Pieces(u64),
    /// At most this many bytes of bodies, for a reader that holds each
    /// body whole until the application takes it: a transfer is read only
    /// once its announced size fits beside the pieces not yet taken and the
    /// rest of the bodies being received, then read to its end. (Pieces
    /// would let several half-received bodies fill the budget, and none
    /// could finish.) A body larger than the budget is read alone.
    WholeBodies(u64),
}

impl TransportConfig {
    /// A configuration with the defaults above and no peers.
    #[must_use]
    pub fn new(
        node_id: u64,
        identity: TlsIdentity,
        crypto: Arc<rustls::crypto::CryptoProvider>,
        time: Arc<dyn rustls::time_provider::TimeProvider>,
        seed: [u8; 32],
    ) -> Self {
        Self {
            node_id,
            peers: BTreeMap::new(),
            identity,
            crypto,
            time,
            seed,
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(1),
            reconnect_delay_min: Duration::from_millis(20),
            reconnect_delay_max: Duration::from_secs(2),
            max_transmit_segments: 1,
            mtu_max: MTU_MAX_DEFAULT,
            datagrams_may_fragment: false,
            chunk_bytes_max: 1 << 40,
            delivery_budget: DeliveryBudget::Pieces(64 << 20),
            announce_inbound: false,
            application_deliveries: true,
        }
    }
}

/// Why a transport could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportConfigError {
    /// The TLS material or provider was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A timing field is out of range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The datagram, or several of `segment_size` bytes each (the last may
    /// be shorter) when the socket does segmentation offload.
    pub contents: Bytes,
    /// Set when `contents` holds several datagrams.
    pub segment_size: Option<usize>,
}

/// Something that happened to a connection, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// A connection to this peer is ready.
    Connected {
        /// The peer.
        peer: u64,
        /// Where the peer's packets come from.
        address: SocketAddr,
        /// Whether the peer dialed this node.
        inbound: bool,
    },
    /// The connection to this peer was lost or could not be made.
    Lost {
        /// The peer.
        peer: u64,
        /// Why.
        reason: String,
    },
    /// An incoming connection attempt failed before it was a connection:
    /// usually a stale packet of a connection this node no longer knows
    /// (after a restart), sometimes a peer that is not one of ours.
    HandshakeFailed {
        /// The remote address.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A connection was refused: the peer misbehaved or could not prove
    /// its identity.
    Refused {
        /// The remote address.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// One output of [`Transport::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportOutput {
    /// Send this from the UDP socket.
    Transmit(Transmit),
    /// A Raft message from an authenticated peer.
    Raft {
        /// The sender.
        from: u64,
        /// The encoded message.
        message: Bytes,
    },
    /// The outcome of [`Transport::request`].
    Response {
        /// The ticket given with the request.
        ticket: u64,
        /// The response, or why there is none.
        result: Result<RpcResponse, RpcError>,
    },
    /// Read `len` bytes of the file at `offset` for a transfer and pass
    /// them to [`Transport::handle_file_read`].
    ReadFile {
        /// The transfer.
        transfer: TransferId,
        /// The file.
        path: std::path::PathBuf,
        /// Where to read.
        offset: u64,
        /// How much (less only at the end of the file).
        len: usize,
    },
    /// The outcome of [`Transport::send_chunk`].
    ChunkSent {
        /// The ticket given with the transfer.
        ticket: u64,
        /// The bytes the receiver verified, or why the transfer failed.
        result: Result<TransferReport, TransferError>,
    },
    /// A Raft message sent as a transfer ([`Transport::send_raft`]) arrived
    /// verified, or was lost.
    RaftTransferDone {
        /// The transfer.
        transfer: TransferId,
        /// Whether the receiver verified it.
        delivered: bool,
    },
    /// A client operation from an authenticated peer, for the node to run
    /// and answer with [`Transport::respond`].
    ClientRequest {
        /// The peer.
        from: u64,
        /// The request's id.
        id: MessageId,
        /// What it asks.
        operation: crate::client::ClientOperation,
        /// The command or query.
        data: Bytes,
    },
    /// The outcome of [`Transport::connect`].
    Connected {
        /// The ticket given with the dial.
        ticket: u64,
        /// The node that answered, or why none did.
        result: Result<u64, RpcError>,
    },
    /// Something a peer sent for the application.
    Delivery(Delivery),
    /// Report this.
    Event(TransportEvent),
}

/// Something a peer sent for the application: messages, and the pieces and
/// outcome of an incoming transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A peer dialed this node and proved its identity; what it sends
    /// follows. Only with [`TransportConfig::announce_inbound`].
    Connected {
        /// The peer.
        peer: u64,
        /// Where its packets come from.
        address: SocketAddr,
    },
    /// A one-way message.
    OneWay {
        /// The sender.
        from: u64,
        /// The message.
        message: OneWayMessage,
    },
    /// Opaque bytes.
    Data {
        /// The sender.
        from: u64,
        /// The bytes.
        data: Bytes,
    },
    /// A peer started a transfer; its body follows as
    /// [`Delivery::ChunkData`], then [`Delivery::ChunkReceived`].
    ChunkIncoming {
        /// The sender.
        from: u64,
        /// Names the transfer.
        transfer: TransferId,
        /// The body's size.
        size: u64,
    },
    /// The next piece of a transfer's body, not yet verified.
    ChunkData {
        /// The transfer.
        transfer: TransferId,
        /// The bytes.
        data: Bytes,
    },
    /// The transfer ended: the body matched its SHA-256 digest, or why not.
    ChunkReceived {
        /// The transfer.
        transfer: TransferId,
        /// The verified size, or the failure.
        result: Result<u64, TransferError>,
    },
}

/// What a one-way message or data delivery counts beyond its bytes: the
/// room it takes while it waits.
const MESSAGE_OVERHEAD_BYTES: u64 = 64;

/// Room that deliveries take in the [`TransportConfig::delivery_budget`],
/// until the application has them and says so
/// ([`Transport::deliveries_taken`]). Pieces of transfer bodies and
/// messages are counted apart: a slow file reader holds back transfers,
/// not Raft, and unread messages hold back messages, not transfers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Room {
    /// Bytes of [`Delivery::ChunkData`].
    pub pieces: u64,
    /// Bytes of [`Delivery::Data`] and [`Delivery::OneWay`], plus 64 for
    /// each message.
    pub messages: u64,
}

impl Room {
    /// Whether it counts nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Delivery {
    /// The room this delivery takes: report it with
    /// [`Transport::deliveries_taken`] once the application has it.
    #[must_use]
    pub fn room(&self) -> Room {
        match self {
            Self::ChunkData { data, .. } => Room { pieces: data.len() as u64, messages: 0 },
            Self::Data { data, .. } => Room { pieces: 0, messages: data_room(data) },
            Self::OneWay { message, .. } => Room { pieces: 0, messages: one_way_room(message) },
            Self::Connected { .. } | Self::ChunkIncoming { .. } | Self::ChunkReceived { .. } => {
                Room::default()
            }
        }
    }
}

fn data_room(data: &Bytes) -> u64 {
    MESSAGE_OVERHEAD_BYTES + data.len() as u64
}

fn one_way_room(message: &OneWayMessage) -> u64 {
    MESSAGE_OVERHEAD_BYTES
        + match message {
            OneWayMessage::Custom { operation, data } => (operation.len() + data.len()) as u64,
            OneWayMessage::Heartbeat { .. } => 0,
        }
}

/// The room a frame takes once delivered: messages only.
fn frame_room(frame: &Frame) -> u64 {
    match frame {
        Frame::Data(data) => data_room(data),
        Frame::OneWay(message) => one_way_room(message),
        _ => 0,
    }
}

/// What a transport knows of one peer ([`Transport::peer_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Where the peer listens, if known.
    pub address: Option<SocketAddr>,
    /// QUIC's figures for the connection in use, if one is ready.
    pub link: Option<LinkStats>,
}

/// QUIC's figures for one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// The smoothed round-trip time.
    pub rtt: Duration,
    /// The congestion window, in bytes.
    pub congestion_window: u64,
    /// UDP payload bytes sent.
    pub sent_bytes: u64,
    /// UDP payload bytes received.
    pub received_bytes: u64,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// The largest UDP payload the path carries, as MTU discovery found
    /// so far.
    pub mtu: u16,
}

impl From<quinn_proto::ConnectionStats> for LinkStats {
    fn from(stats: quinn_proto::ConnectionStats) -> Self {
        Self {
            rtt: stats.path.rtt,
            congestion_window: stats.path.cwnd,
            sent_bytes: stats.udp_tx.bytes,
            received_bytes: stats.udp_rx.bytes,
            sent_packets: stats.path.sent_packets,
            lost_packets: stats.path.lost_packets,
            mtu: stats.path.current_mtu,
        }
    }
}

/// Counters of a transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Datagrams handed in.
    pub datagrams_received: u64,
    /// Transmits handed out.
    pub transmits_sent: u64,
    /// Frames decoded from peers.
    pub frames_received: u64,
    /// Frames queued to peers.
    pub frames_sent: u64,
    /// Raft messages dropped (no connection, queue full).
    pub raft_dropped: u64,
    /// Connections refused or closed for misbehaviour.
    pub connections_refused: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Body bytes hashed for transfers sent (and ended): a body sent to
    /// several peers at once is hashed, and counted, once.
    pub chunk_bytes_hashed: u64,
    /// Data and one-way messages dropped because
    /// [`TransportConfig::application_deliveries`] is off.
    pub messages_dropped: u64,
}

#[derive(Debug, Default)]
struct Peer {
    address: Option<SocketAddr>,
    active: Option<ConnectionHandle>,
    dialing: Option<ConnectionHandle>,
    waiting: VecDeque<Bytes>,
    waiting_transfers: Vec<PendingTransfer>,
    reconnect_delay: Duration,
    reconnect_at: Option<Instant>,
}

#[derive(Debug)]
struct PendingCall {
    to: u64,
    ticket: u64,
    deadline: Instant,
    timeout: Duration,
}

/// Connection ids drawn from the transport's seed.
struct SeededConnectionIds(ChaCha20Rng);

impl ConnectionIdGenerator for SeededConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0; 8];
        self.0.fill_bytes(&mut bytes);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// quinn's token clock, read from the same source as certificate checks.
#[derive(Debug)]
struct TokenClock(Arc<dyn rustls::time_provider::TimeProvider>);

impl quinn_proto::TimeSource for TokenClock {
    fn now(&self) -> SystemTime {
        let seconds = self.0.current_time().map_or(0, |time| time.as_secs());
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }
}

/// A node's QUIC endpoint and its connections. See the module documentation.
pub struct Transport {
    node_id: u64,
    endpoint: Endpoint,
    client_config: ClientConfig,
    /// For dials by address, where the node answering is not known yet.
    any_node_config: ClientConfig,
    /// Boxed: a connection is kilobytes, and each is taken out of the map
    /// while it is driven.
    connections: BTreeMap<ConnectionHandle, Box<Connection>>,
    peers: BTreeMap<u64, Peer>,
    pending: BTreeMap<MessageId, PendingCall>,
    deadlines: BTreeSet<(Instant, MessageId)>,
    next_message_id: u64,
    handler: Option<RequestHandler>,
    /// Connections with work to drive.
    dirty: BTreeSet<ConnectionHandle>,
    /// Where each outgoing transfer runs, for its file reads.
    transfers: BTreeMap<TransferId, (ConnectionHandle, StreamId)>,
    next_transfer: u64,
    chunk_bytes_max: u64,
    /// See [`TransportConfig::application_deliveries`].
    application_deliveries: bool,
    /// See [`TransportConfig::delivery_budget`].
    delivery_budget: DeliveryBudget,
    /// Body bytes delivered and not yet reported taken.
    delivered_unread: u64,
    /// Room of messages delivered and not yet reported taken.
    messages_unread: u64,
    /// Body bytes of admitted application transfers not yet delivered
    /// (with [`DeliveryBudget::WholeBodies`]).
    promised: u64,
    /// Announced sizes of the Raft bodies being received.
    raft_promised: u64,
    /// Incoming transfers left unread until there is room for them.
    paused: BTreeSet<(ConnectionHandle, StreamId)>,
    /// Connections whose messages are left unread until there is room.
    frames_paused: BTreeSet<ConnectionHandle>,
    /// Whether room was freed since the paused transfers were last tried.
    room_freed: bool,
    announce_inbound: bool,
    outputs: VecDeque<TransportOutput>,
    buffer: Vec<u8>,
    stats: TransportStats,
    reconnect_delay_min: Duration,
    reconnect_delay_max: Duration,
    max_transmit_segments: usize,
    shut_down: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Transport")
            .field("node_id", &self.node_id)
            .field("connections", &self.connections.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Builds the endpoint. No packet leaves until something is sent.
    ///
    /// # Errors
    ///
    /// TLS material the provider refuses, or timing out of range.
    pub fn new(config: TransportConfig) -> Result<Self, TransportConfigError> {
        let invalid = |field: &'static str, reason: String| TransportConfigError::Invalid { field, reason };
        let tls = tls::configs(&config.identity, &config.crypto, &config.time)?;
        let quic_error = |error: quinn_proto::crypto::rustls::NoInitialCipherSuite| {
            TlsError::Config(format!("no TLS 1.3 AES-128-GCM suite for QUIC initial packets: {error}"))
        };
        let server_crypto =
            quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls.server).map_err(quic_error)?;
        let client_crypto =
            quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls.client).map_err(quic_error)?;
        let any_node_crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls.any_node_client)
            .map_err(quic_error)?;

        let mut transport = quinn_proto::TransportConfig::default();
        let idle = quinn_proto::IdleTimeout::try_from(config.idle_timeout)
            .map_err(|error| invalid("idle_timeout", error.to_string()))?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(config.keep_alive_interval))
            .max_concurrent_uni_streams(VarInt::from_u32(1))
            .max_concurrent_bidi_streams(VarInt::from_u32(CONCURRENT_TRANSFERS_MAX));
        if !MTU_RANGE.contains(&config.mtu_max) {
            return Err(invalid("mtu_max", format!("{} is not within {MTU_RANGE:?}", config.mtu_max)));
        }
        let mut mtu = quinn_proto::MtuDiscoveryConfig::default();
        mtu.upper_bound(config.mtu_max);
        transport.mtu_discovery_config(Some(mtu));
        let transport = Arc::new(transport);

        let mut rng = ChaCha20Rng::from_seed(config.seed);
        let mut draw = || {
            let mut bytes = [0; 32];
            rng.fill_bytes(&mut bytes);
            bytes
        };
        // The reset key must survive restarts: a restarted node then resets
        // connections its previous run held, so peers notice at once. It is
        // derived from the node's private key, which is secret and stable.
        let reset_secret = ring::digest::digest(&ring::digest::SHA256, config.identity.key.secret_der());
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret.as_ref());
        let mut endpoint_config = EndpointConfig::new(Arc::new(reset_key));
        // Peers send datagrams as large as this node accepts, and no larger.
        endpoint_config
            .max_udp_payload_size(config.mtu_max)
            .map_err(|error| invalid("mtu_max", error.to_string()))?;
        let cid_seed = Mutex::new(ChaCha20Rng::from_seed(draw()));
        endpoint_config.rng_seed(Some(draw())).cid_generator(move || {
            let mut seeds = cid_seed.lock().expect("the generator seed lock is never poisoned");
            Box::new(SeededConnectionIds(ChaCha20Rng::from_rng(&mut *seeds)))
        });

        let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&draw());
        let mut server = ServerConfig::new(Arc::new(server_crypto), Arc::new(token_key));
        server.transport_config(transport.clone()).time_source(Arc::new(TokenClock(config.time.clone())));
        // Address validation tokens are for clients that come back later
        // over the internet; peers of a cluster gain nothing from them.
        server.validation_token.sent(0);

        let initial_ids = Arc::new(Mutex::new(ChaCha20Rng::from_seed(draw())));
        let client = |crypto: quinn_proto::crypto::rustls::QuicClientConfig| {
            let mut config = ClientConfig::new(Arc::new(crypto));
            let initial_ids = initial_ids.clone();
            config.transport_config(transport.clone()).initial_dst_cid_provider(Arc::new(move || {
                let mut bytes = [0; 16];
                initial_ids.lock().expect("the initial id lock is never poisoned").fill_bytes(&mut bytes);
                ConnectionId::new(&bytes)
            }));
            config
        };
        let client_config = client(client_crypto);
        let any_node_config = client(any_node_crypto);

        let discover_mtu = !config.datagrams_may_fragment;
        let endpoint = Endpoint::new(Arc::new(endpoint_config), Some(Arc::new(server)), discover_mtu, None);
        let peers = config
            .peers
            .iter()
            .filter(|&(&id, _)| id != config.node_id)
            .map(|(&id, &address)| (id, Peer { address: Some(address), ..Peer::default() }))
            .collect();
        Ok(Self {
            node_id: config.node_id,
            endpoint,
            client_config,
            any_node_config,
            connections: BTreeMap::new(),
            peers,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_message_id: 0,
            handler: None,
            dirty: BTreeSet::new(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
            // No application transfer fits when none is delivered.
            chunk_bytes_max: if config.application_deliveries { config.chunk_bytes_max } else { 0 },
            application_deliveries: config.application_deliveries,
            delivery_budget: config.delivery_budget,
            delivered_unread: 0,
            messages_unread: 0,
            promised: 0,
            raft_promised: 0,
            paused: BTreeSet::new(),
            frames_paused: BTreeSet::new(),
            room_freed: false,
            announce_inbound: config.announce_inbound,
            outputs: VecDeque::new(),
            buffer: Vec::new(),
            stats: TransportStats::default(),
            reconnect_delay_min: config.reconnect_delay_min,
            reconnect_delay_max: config.reconnect_delay_max.max(config.reconnect_delay_min),
            max_transmit_segments: config.max_transmit_segments.max(1),
            shut_down: false,
        })
    }

    /// This node's id.
    #[must_use]
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> TransportStats {
        TransportStats { connections_open: self.connections.len() as u64, ..self.stats }
    }

    /// QUIC's statistics of the connection in use to `peer`, if any.
    #[must_use]
    pub fn connection_stats(&self, peer: u64) -> Option<quinn_proto::ConnectionStats> {
        let handle = self.peers.get(&peer)?.active?;
        Some(self.connections.get(&handle)?.quinn.stats())
    }

    /// Whether a connection to `peer` is ready.
    #[must_use]
    pub fn is_connected(&self, peer: u64) -> bool {
        self.peers.get(&peer).is_some_and(|peer| peer.active.is_some())
    }

    /// Where `peer` listens, if known.
    #[must_use]
    pub fn peer_addr(&self, peer: u64) -> Option<SocketAddr> {
        self.peers.get(&peer)?.address
    }

    /// What is known of `peer`; `None` for a node never heard of.
    #[must_use]
    pub fn peer_status(&self, peer: u64) -> Option<PeerStatus> {
        let entry = self.peers.get(&peer)?;
        let link = entry.active.and_then(|handle| self.connections.get(&handle));
        Some(PeerStatus { address: entry.address, link: link.map(|c| c.quinn.stats().into()) })
    }

    /// Dials `address` without knowing which node listens there; the
    /// outcome comes as [`TransportOutput::Connected`] with `ticket`: the
    /// id of the node whose certificate (from the cluster CA) and hello
    /// agree. A node already connected at that address answers at once.
    /// The address becomes the node's for later sends.
    pub fn connect(&mut self, now: Instant, ticket: u64, address: SocketAddr) {
        let answer = |result| TransportOutput::Connected { ticket, result };
        if self.shut_down {
            self.outputs.push_back(answer(Err(RpcError::ShuttingDown)));
            return;
        }
        let known =
            self.peers.iter().find(|(_, peer)| peer.active.is_some() && peer.address == Some(address));
        if let Some((&peer, _)) = known {
            self.outputs.push_back(answer(Ok(peer)));
            return;
        }
        let dialing = self.connections.values_mut().find(|connection| {
            connection.outbound
                && connection.peer.is_none()
                && !connection.closing
                && connection.quinn.remote_address() == address
        });
        if let Some(connection) = dialing {
            connection.dial_tickets.push(ticket);
            return;
        }
        // The name is not checked (see `tls::configs`); it only has to be
        // valid.
        match self.endpoint.connect(now, self.any_node_config.clone(), address, "octopii") {
            Ok((handle, quinn)) => {
                let mut connection = Box::new(Connection::new(quinn, None, true));
                connection.dial_tickets.push(ticket);
                self.connections.insert(handle, connection);
                self.dirty.insert(handle);
                self.drive_dirty(now);
            }
            Err(error) => {
                let reason = error.to_string();
                self.outputs.push_back(answer(Err(RpcError::Unreachable { address, reason })));
            }
        }
    }

    /// Answers request `id` of `to` (a [`TransportOutput::ClientRequest`]).
    /// Best effort: a response that does not fit a frame becomes an error
    /// payload; one for a peer no longer connected is dropped, and the
    /// caller's deadline answers it.
    pub fn respond(&mut self, now: Instant, to: u64, id: MessageId, payload: ResponsePayload) {
        let _ = self.send_frame(now, to, encode_response(id, payload));
        self.drive_dirty(now);
    }

    /// Answers request `id` from `from`, which arrived on `connection`:
    /// while a connection is driven it is out of the map, so the answer is
    /// queued on it directly.
    fn answer_request(
        &mut self,
        now: Instant,
        connection: &mut Connection,
        from: u64,
        id: MessageId,
        payload: ResponsePayload,
    ) {
        let response = encode_response(id, payload);
        if connection.retiring {
            // The caller's pending request fails by its deadline if the
            // kept connection cannot take the answer.
            let _ = self.send_frame(now, from, response);
        } else {
            connection.enqueue(response);
        }
    }

    /// Installs the handler for incoming requests, replacing any earlier one.
    pub fn set_request_handler(&mut self, handler: RequestHandler) {
        self.handler = Some(handler);
    }

    /// Every peer whose address is known, with it.
    #[must_use]
    pub fn known_addresses(&self) -> Vec<(u64, SocketAddr)> {
        self.peers.iter().filter_map(|(&id, peer)| Some((id, peer.address?))).collect()
    }

    /// Records where `peer` listens if no address is known for it yet (an
    /// address from the configuration or an operator wins).
    pub fn learn_peer_addr(&mut self, now: Instant, peer: u64, address: SocketAddr) {
        if self.peers.get(&peer).is_none_or(|known| known.address.is_none()) {
            self.update_peer_addr(now, peer, address);
        }
    }

    /// Sets where `peer` listens; a connection being dialed to the old
    /// address is abandoned.
    pub fn update_peer_addr(&mut self, now: Instant, peer: u64, address: SocketAddr) {
        if peer == self.node_id {
            return;
        }
        let entry = self.peers.entry(peer).or_default();
        if entry.address == Some(address) {
            return;
        }
        entry.address = Some(address);
        entry.reconnect_at = None;
        entry.reconnect_delay = Duration::ZERO;
        if let Some(dialing) = entry.dialing.take()
            && let Some(connection) = self.connections.get_mut(&dialing)
        {
            connection.close(now, CLOSE_SHUTDOWN, "peer address changed");
        }
        self.dial_if_waiting(now, peer);
        self.drive_all(now);
    }

    /// Sends a Raft message to `to`, best effort: it is dropped when the
    /// peer is unknown or too much is queued (Raft sends again). A message
    /// above [`RAFT_INLINE_BYTES_MAX`] goes as a transfer, whose id is
    /// returned; its end is reported by [`TransportOutput::RaftTransferDone`].
    pub fn send_raft(&mut self, now: Instant, to: u64, message: Bytes) -> Option<TransferId> {
        let mut transfer = None;
        if message.len() > RAFT_INLINE_BYTES_MAX {
            let (source, digest) = (ChunkSource::Memory(message), SharedDigest::default());
            transfer = Some(self.queue_transfer(now, None, to, source, digest, Purpose::Raft));
        } else if self.send_frame(now, to, Frame::Raft(message).encode()).is_err() {
            self.stats.raft_dropped += 1;
        }
        self.drive_dirty(now);
        transfer
    }

    /// Sends `source` to each peer of `targets` (ticket, peer), each on a
    /// stream of its own; each outcome comes back as
    /// [`TransportOutput::ChunkSent`] with its ticket once that receiver
    /// has verified the digest (or the transfer failed). A file is read
    /// through [`TransportOutput::ReadFile`], by each transfer at its own
    /// pace; its digest is computed once for all of them.
    pub fn send_chunk(&mut self, now: Instant, targets: &[(u64, u64)], source: ChunkSource) {
        let digest = SharedDigest::default();
        for &(ticket, to) in targets {
            self.queue_transfer(now, Some(ticket), to, source.clone(), digest.clone(), Purpose::Application);
        }
        self.drive_dirty(now);
    }

    /// The application took deliveries that took `room` (the sum of their
    /// [`Delivery::room`]): transfers and message streams paused by
    /// [`TransportConfig::delivery_budget`] are read again once there is
    /// room.
    pub fn deliveries_taken(&mut self, now: Instant, room: Room) {
        self.delivered_unread = self.delivered_unread.saturating_sub(room.pieces);
        self.messages_unread = self.messages_unread.saturating_sub(room.messages);
        self.room_freed = true;
        self.drive_dirty(now);
    }

    /// How many body bytes `incoming` may be read now; admits it first if
    /// its whole body must fit before it is read.
    fn body_budget(&mut self, incoming: &mut Incoming) -> u64 {
        let Some(size) = incoming.size() else { return 0 };
        if incoming.admitted() {
            return u64::MAX;
        }
        let (held, max) = match (incoming.purpose(), self.delivery_budget) {
            (Purpose::Raft, _) => (self.raft_promised, RAFT_RECEIVING_BYTES_MAX),
            (Purpose::Application, DeliveryBudget::Unlimited) => return u64::MAX,
            (Purpose::Application, DeliveryBudget::Pieces(max)) => {
                return max.saturating_sub(self.delivered_unread);
            }
            (Purpose::Application, DeliveryBudget::WholeBodies(max)) => {
                (self.delivered_unread.saturating_add(self.promised), max)
            }
        };
        if held > 0 && held.saturating_add(size) > max {
            return 0;
        }
        match incoming.purpose() {
            Purpose::Raft => self.raft_promised += size,
            Purpose::Application => self.promised += size,
        }
        incoming.admit();
        u64::MAX
    }

    /// How much room messages may take now.
    fn message_budget(&self) -> u64 {
        match self.delivery_budget {
            DeliveryBudget::Unlimited => u64::MAX,
            DeliveryBudget::Pieces(max) | DeliveryBudget::WholeBodies(max) => {
                max.saturating_sub(self.messages_unread)
            }
        }
    }

    /// Tries again the messages and transfers paused for want of room.
    fn resume_paused(&mut self, now: Instant) {
        for handle in std::mem::take(&mut self.frames_paused) {
            let Some(mut connection) = self.connections.remove(&handle) else { continue };
            self.read(now, handle, &mut connection);
            self.connections.insert(handle, connection);
            self.dirty.insert(handle);
        }
        for (handle, stream) in std::mem::take(&mut self.paused) {
            let Some(mut connection) = self.connections.remove(&handle) else { continue };
            self.read_incoming(&mut connection, handle, stream);
            self.connections.insert(handle, connection);
            self.dirty.insert(handle);
        }
    }

    /// An incoming transfer ended: what it was promised and did not
    /// deliver is free again.
    fn release(&mut self, incoming: &Incoming) {
        let promised = incoming.promised();
        match incoming.purpose() {
            Purpose::Raft => self.raft_promised = self.raft_promised.saturating_sub(promised),
            Purpose::Application => self.promised = self.promised.saturating_sub(promised),
        }
        self.room_freed |= promised > 0;
    }

    /// A read asked for by [`TransportOutput::ReadFile`] finished.
    pub fn handle_file_read(
        &mut self,
        now: Instant,
        transfer: TransferId,
        result: Result<FileRead, IoError>,
    ) {
        // A transfer that failed meanwhile no longer wants its reads.
        let Some(&(handle, stream)) = self.transfers.get(&transfer) else { return };
        let Some(mut connection) = self.connections.remove(&handle) else { return };
        if let Some(outgoing) = connection.outgoing.get_mut(&stream) {
            match outgoing.on_read(result) {
                Ok(()) => self.progress_outgoing(&mut connection, stream),
                Err(error) => self.finish_outgoing(&mut connection, stream, Err(error)),
            }
        }
        self.connections.insert(handle, connection);
        self.dirty.insert(handle);
        self.drive_dirty(now);
    }

    /// Sends a request to `to`; its outcome comes back as
    /// [`TransportOutput::Response`] with `ticket`, at the latest when
    /// `timeout` has passed.
    pub fn request(
        &mut self,
        now: Instant,
        ticket: u64,
        to: u64,
        payload: RequestPayload,
        timeout: Duration,
    ) {
        let id = MessageId(self.next_message_id);
        self.next_message_id += 1;
        let frame = Frame::Request { id, payload }.encode();
        let sent = self.check_size(&frame).and_then(|()| self.send_frame(now, to, frame));
        match sent {
            Ok(()) => {
                let deadline = now + timeout;
                self.pending.insert(id, PendingCall { to, ticket, deadline, timeout });
                self.deadlines.insert((deadline, id));
            }
            Err(error) => self.outputs.push_back(TransportOutput::Response { ticket, result: Err(error) }),
        }
        self.drive_dirty(now);
    }

    /// Sends a one-way message to `to`; `Ok` once it is queued.
    ///
    /// # Errors
    ///
    /// Unknown peer, a full queue, too large, or shutting down.
    pub fn send_one_way(&mut self, now: Instant, to: u64, message: OneWayMessage) -> Result<(), RpcError> {
        let frame = Frame::OneWay(message).encode();
        let result = self.check_size(&frame).and_then(|()| self.send_frame(now, to, frame));
        self.drive_dirty(now);
        result
    }

    /// Sends opaque bytes to `to`; `Ok` once they are queued.
    ///
    /// # Errors
    ///
    /// As [`Transport::send_one_way`].
    pub fn send_data(&mut self, now: Instant, to: u64, data: Bytes) -> Result<(), RpcError> {
        let frame = Frame::Data(data).encode();
        let result = self.check_size(&frame).and_then(|()| self.send_frame(now, to, frame));
        self.drive_dirty(now);
        result
    }

    /// Closes every connection and fails every pending request and
    /// transfer; later sends fail with [`RpcError::ShuttingDown`]. Keep feeding datagrams and
    /// timeouts until [`Transport::is_idle`] so peers learn of the close.
    pub fn shutdown(&mut self, now: Instant) {
        self.shut_down = true;
        let handles: Vec<ConnectionHandle> = self.connections.keys().copied().collect();
        for handle in handles {
            let mut connection = self.connections.remove(&handle).expect("listed above");
            // A connection this node closes sees no loss event: its
            // transfers end here.
            self.fail_transfers(&mut connection, "node shutting down");
            connection.close(now, CLOSE_SHUTDOWN, "node shutting down");
            for ticket in connection.dial_tickets.drain(..) {
                let result = Err(RpcError::ShuttingDown);
                self.outputs.push_back(TransportOutput::Connected { ticket, result });
            }
            self.connections.insert(handle, connection);
        }
        let pending = std::mem::take(&mut self.pending);
        self.deadlines.clear();
        for call in pending.into_values() {
            let result = Err(RpcError::ShuttingDown);
            self.outputs.push_back(TransportOutput::Response { ticket: call.ticket, result });
        }
        self.drive_all(now);
    }

    /// Whether every connection has finished closing.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.connections.is_empty()
    }

    /// Datagrams arrived on the socket. Feed every datagram one read of the
    /// socket gave at once: connections are driven once for the batch, so
    /// acknowledgements and answers cover many packets.
    pub fn handle_datagrams(
        &mut self,
        now: Instant,
        datagrams: impl IntoIterator<Item = (SocketAddr, BytesMut)>,
    ) {
        for (from, data) in datagrams {
            self.feed_datagram(now, from, data);
        }
        self.drive_dirty(now);
    }

    fn feed_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        self.stats.datagrams_received += 1;
        self.buffer.clear();
        match self.endpoint.handle(now, from, None, None, data, &mut self.buffer) {
            None => {}
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(connection) = self.connections.get_mut(&handle) {
                    connection.quinn.handle_event(event);
                    self.dirty.insert(handle);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.shut_down {
                    self.endpoint.ignore(incoming);
                } else {
                    self.buffer.clear();
                    match self.endpoint.accept(incoming, now, &mut self.buffer, None) {
                        Ok((handle, quinn)) => {
                            self.connections.insert(handle, Box::new(Connection::new(quinn, None, false)));
                            self.dirty.insert(handle);
                        }
                        Err(error) => {
                            self.stats.connections_refused += 1;
                            let reason = error.cause.to_string();
                            let event = TransportEvent::HandshakeFailed { address: from, reason };
                            self.outputs.push_back(TransportOutput::Event(event));
                            if let Some(transmit) = error.response {
                                self.push_transmit(&transmit);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => self.push_transmit(&transmit),
        }
    }

    /// The time from [`Transport::poll_timeout`] has been reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (&handle, connection) in &mut self.connections {
            if connection.timeout.is_some_and(|at| at <= now) {
                connection.quinn.handle_timeout(now);
                self.dirty.insert(handle);
            }
        }
        while let Some(&(deadline, id)) = self.deadlines.first()
            && deadline <= now
        {
            self.deadlines.pop_first();
            let call = self.pending.remove(&id).expect("every deadline has its pending call");
            let result = Err(RpcError::TimedOut { timeout_ms: call.timeout.as_millis() as u64 });
            self.outputs.push_back(TransportOutput::Response { ticket: call.ticket, result });
        }
        let due: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.reconnect_at.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for peer in due {
            self.peers.get_mut(&peer).expect("listed above").reconnect_at = None;
            self.dial_if_waiting(now, peer);
        }
        self.drive_dirty(now);
    }

    /// When to call [`Transport::handle_timeout`]; `None` if nothing waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connections = self.connections.values().filter_map(|connection| connection.timeout);
        let deadline = self.deadlines.first().map(|&(deadline, _)| deadline);
        let reconnects = self.peers.values().filter_map(|peer| peer.reconnect_at);
        connections.chain(deadline).chain(reconnects).min()
    }

    /// The next output, `None` when there is nothing more until the next
    /// input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<TransportOutput> {
        self.outputs.pop_front()
    }

    fn check_size(&self, frame: &Bytes) -> Result<(), RpcError> {
        let body = frame.len() - frame::FRAME_HEADER_BYTES;
        if body > FRAME_BYTES_MAX {
            return Err(RpcError::TooLarge { bytes: body, max: FRAME_BYTES_MAX });
        }
        Ok(())
    }

    /// Queues an encoded frame for `to`, dialing if needed.
    fn send_frame(&mut self, now: Instant, to: u64, frame: Bytes) -> Result<(), RpcError> {
        if self.shut_down {
            return Err(RpcError::ShuttingDown);
        }
        let peer = self.peers.get_mut(&to).ok_or(RpcError::UnknownPeer(to))?;
        if let Some(handle) = peer.active {
            let connection = self.connections.get_mut(&handle).expect("an active connection is open");
            if connection.queued_bytes + frame.len() > QUEUED_BYTES_MAX {
                return Err(RpcError::QueueFull(to));
            }
            connection.enqueue(frame);
            self.dirty.insert(handle);
        } else {
            if peer.address.is_none() {
                return Err(RpcError::UnknownPeer(to));
            }
            if peer.waiting.len() >= WAITING_FRAMES_MAX {
                return Err(RpcError::QueueFull(to));
            }
            peer.waiting.push_back(frame);
            self.dial_if_waiting(now, to);
        }
        self.stats.frames_sent += 1;
        Ok(())
    }

    /// Dials `peer` if frames wait for it, no connection exists or is being
    /// made, and no reconnect delay is running.
    fn dial_if_waiting(&mut self, now: Instant, peer_id: u64) {
        let Some(peer) = self.peers.get_mut(&peer_id) else { return };
        let idle = peer.active.is_none() && peer.dialing.is_none() && peer.reconnect_at.is_none();
        let waiting = !peer.waiting.is_empty() || !peer.waiting_transfers.is_empty();
        let (Some(address), true, true) = (peer.address, idle, waiting) else { return };
        let name = tls::node_name(peer_id);
        match self.endpoint.connect(now, self.client_config.clone(), address, &name) {
            Ok((handle, quinn)) => {
                peer.dialing = Some(handle);
                self.connections.insert(handle, Box::new(Connection::new(quinn, Some(peer_id), true)));
                self.dirty.insert(handle);
            }
            Err(error) => {
                let reason = format!("cannot dial {address}: {error}");
                self.peer_unreachable(now, peer_id, reason);
            }
        }
    }

    /// A dial failed or a connection was lost: fail what waits for the peer
    /// and schedule the next dial.
    fn peer_unreachable(&mut self, now: Instant, peer_id: u64, reason: String) {
        let Some(peer) = self.peers.get_mut(&peer_id) else { return };
        let dropped = peer.waiting.len() as u64;
        peer.waiting.clear();
        let transfers = std::mem::take(&mut peer.waiting_transfers);
        self.stats.raft_dropped += dropped;
        peer.reconnect_delay =
            (peer.reconnect_delay * 2).clamp(self.reconnect_delay_min, self.reconnect_delay_max);
        peer.reconnect_at = Some(now + peer.reconnect_delay);
        let failed: Vec<MessageId> =
            self.pending.iter().filter(|(_, call)| call.to == peer_id).map(|(&id, _)| id).collect();
        for id in failed {
            let call = self.pending.remove(&id).expect("listed above");
            self.deadlines.remove(&(call.deadline, id));
            let result = Err(RpcError::ConnectionLost { peer: peer_id, reason: reason.clone() });
            self.outputs.push_back(TransportOutput::Response { ticket: call.ticket, result });
        }
        for pending in transfers {
            self.fail_pending_transfer(pending, TransferError::Unreachable(reason.clone()));
        }
        self.outputs.push_back(TransportOutput::Event(TransportEvent::Lost { peer: peer_id, reason }));
    }

    /// Puts a transfer on the peer's connection, or waits for one.
    fn queue_transfer(
        &mut self,
        now: Instant,
        ticket: Option<u64>,
        to: u64,
        source: ChunkSource,
        digest: SharedDigest,
        purpose: Purpose,
    ) -> TransferId {
        let transfer = TransferId(self.next_transfer);
        self.next_transfer += 1;
        let pending = PendingTransfer { transfer, ticket, source, digest, purpose };
        if self.shut_down {
            self.fail_pending_transfer(pending, TransferError::Unreachable("shutting down".into()));
            return transfer;
        }
        let Some(peer) =
            self.peers.get_mut(&to).filter(|peer| peer.address.is_some() || peer.active.is_some())
        else {
            self.fail_pending_transfer(pending, TransferError::Unreachable(format!("unknown node {to}")));
            return transfer;
        };
        match peer.active {
            Some(handle) => {
                let mut connection = self.connections.remove(&handle).expect("an active connection is open");
                connection.unstarted.push_back(pending);
                self.start_transfers(now, handle, &mut connection);
                self.connections.insert(handle, connection);
                self.dirty.insert(handle);
            }
            None => {
                peer.waiting_transfers.push(pending);
                self.dial_if_waiting(now, to);
            }
        }
        transfer
    }

    fn fail_pending_transfer(&mut self, pending: PendingTransfer, error: TransferError) {
        match pending.ticket {
            Some(ticket) => self.outputs.push_back(TransportOutput::ChunkSent { ticket, result: Err(error) }),
            None => {
                self.stats.raft_dropped += 1;
                let transfer = pending.transfer;
                self.outputs.push_back(TransportOutput::RaftTransferDone { transfer, delivered: false });
            }
        }
    }

    /// Opens streams for waiting transfers while the peer allows more.
    fn start_transfers(&mut self, now: Instant, handle: ConnectionHandle, connection: &mut Connection) {
        while !connection.unstarted.is_empty() && connection.identified && !connection.closing {
            let Some(stream) = connection.quinn.streams().open(Dir::Bi) else { break };
            let pending = connection.unstarted.pop_front().expect("checked non-empty");
            let PendingTransfer { transfer, ticket, source, digest, purpose } = pending;
            let outgoing = Outgoing::new(transfer, ticket, stream, source, digest, purpose, now);
            self.transfers.insert(transfer, (handle, stream));
            connection.outgoing.insert(stream, outgoing);
            self.progress_outgoing(connection, stream);
        }
    }

    /// Writes what a transfer has ready and asks for the next file read.
    fn progress_outgoing(&mut self, connection: &mut Connection, stream: StreamId) {
        let Some(outgoing) = connection.outgoing.get_mut(&stream) else { return };
        match outgoing.write(&mut connection.quinn) {
            Ok(()) => self.outputs.extend(outgoing.next_read()),
            Err(error) => self.finish_outgoing(connection, stream, Err(error)),
        }
    }

    fn finish_outgoing(
        &mut self,
        connection: &mut Connection,
        stream: StreamId,
        result: Result<TransferReport, TransferError>,
    ) {
        let Some(outgoing) = connection.outgoing.remove(&stream) else { return };
        self.transfers.remove(&outgoing.transfer);
        self.stats.chunk_bytes_hashed += outgoing.hashed;
        if result.is_err() {
            let _ = connection.quinn.send_stream(stream).reset(VarInt::from_u32(chunk::STATUS_ERROR_CODE));
            let _ = connection.quinn.recv_stream(stream).stop(VarInt::from_u32(chunk::STATUS_ERROR_CODE));
        }
        match outgoing.ticket {
            Some(ticket) => self.outputs.push_back(TransportOutput::ChunkSent { ticket, result }),
            None => {
                self.stats.raft_dropped += u64::from(result.is_err());
                let (transfer, delivered) = (outgoing.transfer, result.is_ok());
                self.outputs.push_back(TransportOutput::RaftTransferDone { transfer, delivered });
            }
        }
    }

    /// Takes the transfers an identified peer has opened.
    fn accept_transfers(&mut self, connection: &mut Connection, handle: ConnectionHandle) {
        let (true, Some(from)) = (connection.identified, connection.peer) else { return };
        while let Some(stream) = connection.quinn.streams().accept(Dir::Bi) {
            let transfer = TransferId(self.next_transfer);
            self.next_transfer += 1;
            connection.incoming.insert(stream, Incoming::new(transfer, from, stream, self.chunk_bytes_max));
            self.read_incoming(connection, handle, stream);
        }
    }

    /// Reads an incoming transfer, as far as the delivery budget allows,
    /// and reports what it produced.
    fn read_incoming(&mut self, connection: &mut Connection, handle: ConnectionHandle, stream: StreamId) {
        let Some(incoming) = connection.incoming.get_mut(&stream) else { return };
        let mut received = Vec::new();
        // The header comes first, alone: it says what the body needs.
        let paused = loop {
            let header_read = incoming.size().is_some();
            let budget = usize::try_from(self.body_budget(incoming)).unwrap_or(usize::MAX);
            let paused = incoming.read(&mut connection.quinn, budget, &mut received);
            if header_read || incoming.size().is_none() || incoming.is_done() {
                break paused;
            }
        };
        if paused {
            self.paused.insert((handle, stream));
        }
        let (transfer, from, purpose) = (incoming.transfer, incoming.from, incoming.purpose());
        if incoming.is_done() {
            let incoming = connection.incoming.remove(&stream).expect("the transfer read above");
            self.release(&incoming);
        }
        // An empty application transfer is all that passes a limit of 0.
        if purpose == Purpose::Application && !self.application_deliveries {
            return;
        }
        for event in received {
            let output = match (event, purpose) {
                (Received::Started { size }, Purpose::Application) => {
                    TransportOutput::Delivery(Delivery::ChunkIncoming { from, transfer, size })
                }
                (Received::Data(data), _) => {
                    let delivery = Delivery::ChunkData { transfer, data };
                    let len = delivery.room().pieces;
                    self.delivered_unread += len;
                    // Promised bytes of a transfer still running: its own
                    // count went down as it read them.
                    if matches!(self.delivery_budget, DeliveryBudget::WholeBodies(_)) {
                        self.promised = self.promised.saturating_sub(len);
                    }
                    TransportOutput::Delivery(delivery)
                }
                (Received::Finished { raft: Some(message), .. }, _) => {
                    TransportOutput::Raft { from, message }
                }
                (Received::Finished { result, .. }, Purpose::Application) => {
                    TransportOutput::Delivery(Delivery::ChunkReceived { transfer, result })
                }
                (Received::Started { .. } | Received::Finished { .. }, Purpose::Raft) => continue,
            };
            self.outputs.push_back(output);
        }
    }

    /// The connection is gone: every transfer on it fails.
    fn fail_transfers(&mut self, connection: &mut Connection, reason: &str) {
        let streams: Vec<StreamId> = connection.outgoing.keys().copied().collect();
        for stream in streams {
            self.finish_outgoing(connection, stream, Err(TransferError::Interrupted(reason.to_owned())));
        }
        for pending in std::mem::take(&mut connection.unstarted) {
            self.fail_pending_transfer(pending, TransferError::Unreachable(reason.to_owned()));
        }
        for incoming in std::mem::take(&mut connection.incoming).into_values() {
            self.release(&incoming);
            // Only a transfer the application was told of ends for it.
            let announced = incoming.size().is_some() && self.application_deliveries;
            if announced && incoming.purpose() == Purpose::Application {
                let result = Err(TransferError::Interrupted(reason.to_owned()));
                self.outputs.push_back(TransportOutput::Delivery(Delivery::ChunkReceived {
                    transfer: incoming.transfer,
                    result,
                }));
            }
        }
    }

    fn refused(&mut self, address: SocketAddr, reason: String) {
        self.stats.connections_refused += 1;
        self.outputs.push_back(TransportOutput::Event(TransportEvent::Refused { address, reason }));
    }

    fn push_transmit(&mut self, transmit: &quinn_proto::Transmit) {
        self.stats.transmits_sent += 1;
        // A large batch leaves in the buffer quinn wrote it to, without a
        // copy (quinn reserves a fresh one for the next); a small one (an
        // acknowledgement, say) is copied, and the buffer is used again. A
        // buffer handed on is at least half full, so a queue of transmits
        // holds at most twice the bytes it carries.
        let moved = transmit.size >= TRANSMIT_MOVE_BYTES_MIN && transmit.size * 2 >= self.buffer.capacity();
        let contents = if moved {
            self.buffer.truncate(transmit.size);
            Bytes::from(std::mem::take(&mut self.buffer))
        } else {
            Bytes::copy_from_slice(&self.buffer[..transmit.size])
        };
        self.outputs.push_back(TransportOutput::Transmit(Transmit {
            destination: transmit.destination,
            contents,
            segment_size: transmit.segment_size,
        }));
    }

    /// Runs every connection until none has anything more to do.
    fn drive_all(&mut self, now: Instant) {
        self.dirty.extend(self.connections.keys().copied());
        self.drive_dirty(now);
    }

    /// Runs the connections something happened to (driving one may touch
    /// another, which is then driven too).
    fn drive_dirty(&mut self, now: Instant) {
        loop {
            while let Some(handle) = self.dirty.pop_first() {
                self.drive(now, handle);
            }
            if !std::mem::take(&mut self.room_freed)
                || (self.paused.is_empty() && self.frames_paused.is_empty())
            {
                break;
            }
            self.resume_paused(now);
        }
    }

    /// Processes one connection's events and collects its datagrams.
    fn drive(&mut self, now: Instant, handle: ConnectionHandle) {
        let Some(mut connection) = self.connections.remove(&handle) else { return };
        let mut drained = false;
        loop {
            let mut busy = false;
            while let Some(event) = connection.quinn.poll() {
                busy = true;
                self.on_connection_event(now, handle, &mut connection, event);
            }
            while let Some(event) = connection.quinn.poll_endpoint_events() {
                busy = true;
                drained |= event.is_drained();
                if let Some(event) = self.endpoint.handle_event(handle, event) {
                    connection.quinn.handle_event(event);
                }
            }
            if !busy {
                break;
            }
        }
        loop {
            self.buffer.clear();
            // One send's datagrams travel as one UDP payload (GSO).
            let fit = UDP_PAYLOAD_IPV4_MAX / usize::from(connection.quinn.current_mtu());
            let segments = self.max_transmit_segments.min(fit).max(1);
            let Some(transmit) = connection.quinn.poll_transmit(now, segments, &mut self.buffer) else {
                break;
            };
            self.push_transmit(&transmit);
        }
        connection.timeout = connection.quinn.poll_timeout();
        if drained {
            self.forget(now, handle, &mut connection);
        } else {
            self.connections.insert(handle, connection);
        }
    }

    /// The connection is gone for good: detach it from its peer.
    fn forget(&mut self, now: Instant, handle: ConnectionHandle, connection: &mut Connection) {
        let address = connection.quinn.remote_address();
        self.fail_dial(connection, address, "connection closed".to_owned());
        // A connection this node closed never reports itself lost.
        self.fail_transfers(connection, "connection closed");
        let Some(peer_id) = connection.peer else { return };
        let Some(peer) = self.peers.get_mut(&peer_id) else { return };
        let was_dialing = peer.dialing == Some(handle);
        let was_active = peer.active == Some(handle);
        if was_dialing {
            peer.dialing = None;
        }
        if was_active {
            peer.active = None;
        }
        if (was_dialing || was_active) && !self.shut_down {
            self.peer_unreachable(now, peer_id, "connection closed".to_owned());
        }
    }

    fn on_connection_event(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        connection: &mut Connection,
        event: quinn_proto::Event,
    ) {
        use quinn_proto::Event;
        match event {
            Event::Connected => {
                if connection.outbound {
                    // A fresh stream has credit far beyond a hello, so it
                    // leaves the queue at once and is never moved to another
                    // connection by `retire`.
                    connection.enqueue(Frame::Hello { node_id: self.node_id }.encode());
                    // Dialed by id: rustls has checked the certificate names
                    // it. Dialed by address: identified by its hello.
                    if let Some(peer) = connection.peer {
                        connection.identified = true;
                        self.identified(now, handle, connection, peer);
                    }
                }
            }
            Event::ConnectionLost { reason } => {
                let reason = reason.to_string();
                let address = connection.quinn.remote_address();
                self.fail_dial(connection, address, reason.clone());
                self.fail_transfers(connection, &reason);
                if let Some(peer_id) = connection.peer
                    && let Some(peer) = self.peers.get_mut(&peer_id)
                    && (peer.active == Some(handle) || peer.dialing == Some(handle))
                {
                    if peer.active == Some(handle) {
                        peer.active = None;
                    } else {
                        peer.dialing = None;
                    }
                    if !self.shut_down {
                        self.peer_unreachable(now, peer_id, reason);
                    }
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(stream) = connection.quinn.streams().accept(Dir::Uni) {
                    if connection.receive.is_some() {
                        let address = connection.quinn.remote_address();
                        connection.close(now, CLOSE_PROTOCOL, "second stream");
                        self.refused(address, "peer opened a second stream".to_owned());
                        return;
                    }
                    connection.receive = Some((stream, FrameDecoder::new()));
                }
                self.read(now, handle, connection);
            }
            // Transfers of a peer not yet identified wait in quinn (bounded by
            // the stream limit) until its hello arrives on the other stream.
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => self.accept_transfers(connection, handle),
            Event::Stream(StreamEvent::Readable { id }) => {
                if connection.incoming.contains_key(&id) {
                    self.read_incoming(connection, handle, id);
                } else if let Some(outgoing) = connection.outgoing.get_mut(&id) {
                    if let Some(result) = outgoing.read_status(&mut connection.quinn, now) {
                        self.finish_outgoing(connection, id, result);
                    }
                } else {
                    self.read(now, handle, connection);
                }
            }
            Event::Stream(StreamEvent::Writable { id }) if connection.outgoing.contains_key(&id) => {
                self.progress_outgoing(connection, id);
            }
            Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Available { dir: Dir::Uni }) => {
                connection.flush();
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => {
                self.start_transfers(now, handle, connection)
            }
            Event::Stream(StreamEvent::Finished { id }) if connection.send == Some(id) => {
                connection.sent_all = true;
                connection.close_if_retired(now);
            }
            Event::Stream(StreamEvent::Stopped { id, error_code })
                if connection.outgoing.contains_key(&id) =>
            {
                let error = chunk::refused_or_reset(error_code);
                self.finish_outgoing(connection, id, Err(error));
            }
            // A transfer's send side finished (the receiver took the status
            // byte), or a sender stopped reading the status of its own
            // transfer (quinn does so when a stream is dropped unread): that
            // concerns the transfer alone, never the connection.
            Event::Stream(StreamEvent::Finished { id } | StreamEvent::Stopped { id, .. })
                if id.dir() == Dir::Bi => {}
            Event::Stream(StreamEvent::Stopped { .. } | StreamEvent::Finished { .. }) => {
                let address = connection.quinn.remote_address();
                connection.close(now, CLOSE_PROTOCOL, "stream stopped");
                self.refused(address, "peer stopped our stream".to_owned());
            }
            Event::HandshakeDataReady | Event::DatagramReceived | Event::DatagramsUnblocked => {}
        }
    }

    /// Reads what arrived on the connection's stream and handles the frames.
    fn read(&mut self, now: Instant, handle: ConnectionHandle, connection: &mut Connection) {
        let Some((stream, decoder)) = &mut connection.receive else { return };
        let mut frames = Vec::new();
        let mut failure: Option<String> = None;
        // Only messages for the application count; a stream is paused only
        // while some wait, so the application can always make room.
        let mut budget = self.message_budget();
        let mut held = self.messages_unread > 0;
        if let Ok(mut chunks) = connection.quinn.recv_stream(*stream).read(true) {
            loop {
                if budget == 0 && held {
                    self.frames_paused.insert(handle);
                    break;
                }
                match chunks.next(READ_CHUNK_BYTES_MAX) {
                    Ok(Some(chunk)) => {
                        decoder.push(&chunk.bytes);
                        let before = frames.len();
                        if let Err(error) = drain_frames(decoder, &mut frames) {
                            failure = Some(error.to_string());
                            break;
                        }
                        let room: u64 = frames[before..].iter().map(frame_room).sum();
                        budget = budget.saturating_sub(room);
                        held |= room > 0;
                    }
                    // The peer ended its stream: it retired this duplicate.
                    Ok(None) => {
                        match decoder.finish() {
                            Ok(()) => connection.received_all = true,
                            Err(error) => failure = Some(error.to_string()),
                        }
                        break;
                    }
                    Err(quinn_proto::ReadError::Blocked) => break,
                    Err(quinn_proto::ReadError::Reset(code)) => {
                        failure = Some(format!("stream reset with code {code}"));
                        break;
                    }
                }
            }
            // Whether to send flow control credit now is decided by
            // quinn; the next poll_transmit sends it.
            let _ = chunks.finalize();
        }
        self.stats.frames_received += frames.len() as u64;
        for frame in frames {
            if connection.closing {
                return;
            }
            self.on_frame(now, handle, connection, frame);
        }
        if let Some(reason) = failure {
            let address = connection.quinn.remote_address();
            connection.close(now, CLOSE_PROTOCOL, &reason);
            self.refused(address, reason);
        }
        connection.close_if_retired(now);
    }

    fn on_frame(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        connection: &mut Connection,
        frame: Frame,
    ) {
        let address = connection.quinn.remote_address();
        let (from, frame) = match (connection.hello_received, connection.peer, frame) {
            (false, None, Frame::Hello { node_id }) => {
                connection.hello_received = true;
                match self.check_hello(connection, node_id) {
                    Ok(()) => {
                        connection.peer = Some(node_id);
                        connection.identified = true;
                        if connection.outbound {
                            self.peers.entry(node_id).or_default().address.get_or_insert(address);
                            for ticket in connection.dial_tickets.drain(..) {
                                self.outputs
                                    .push_back(TransportOutput::Connected { ticket, result: Ok(node_id) });
                            }
                        } else {
                            // Before `identified`, which may retire this
                            // connection and move unsent frames elsewhere.
                            connection.enqueue(Frame::Hello { node_id: self.node_id }.encode());
                        }
                        self.identified(now, handle, connection, node_id);
                        self.accept_transfers(connection, handle);
                    }
                    Err(reason) => {
                        self.fail_dial(connection, address, reason.clone());
                        connection.close(now, CLOSE_IDENTITY, &reason);
                        self.refused(address, reason);
                    }
                }
                return;
            }
            // The answer of a node dialed by id: rustls has checked its
            // certificate names `peer`.
            (false, Some(peer), Frame::Hello { node_id }) if connection.outbound && node_id == peer => {
                connection.hello_received = true;
                return;
            }
            (true, Some(peer), frame) if !matches!(frame, Frame::Hello { .. }) => (peer, frame),
            (_, _, frame) => {
                let reason = format!("unexpected {} frame", frame_name(&frame));
                connection.close(now, CLOSE_PROTOCOL, &reason);
                self.refused(address, reason);
                return;
            }
        };
        match frame {
            Frame::Raft(message) => self.outputs.push_back(TransportOutput::Raft { from, message }),
            Frame::Request { id, payload: RequestPayload::Custom { operation, data } }
                if operation.starts_with(crate::client::OPERATION_PREFIX) =>
            {
                // The node answers these itself (see `crate::client`).
                match crate::client::ClientOperation::from_name(&operation) {
                    Some(operation) => {
                        self.outputs.push_back(TransportOutput::ClientRequest { from, id, operation, data })
                    }
                    None => {
                        let data = crate::client::ClientReply::Unknown(operation).encode();
                        let payload = ResponsePayload::CustomResponse { success: false, data };
                        self.answer_request(now, connection, from, id, payload);
                    }
                }
            }
            Frame::Request { id, payload } => {
                let request = RpcRequest { message_id: id, from, payload };
                let payload = match &self.handler {
                    Some(handler) => handler.call(request),
                    None => ResponsePayload::Error { message: "no request handler installed".to_owned() },
                };
                self.answer_request(now, connection, from, id, payload);
            }
            Frame::Response { id, payload } => {
                if self.pending.get(&id).is_some_and(|call| call.to == from) {
                    let call = self.pending.remove(&id).expect("checked above");
                    self.deadlines.remove(&(call.deadline, id));
                    let result = Ok(RpcResponse { message_id: id, payload });
                    self.outputs.push_back(TransportOutput::Response { ticket: call.ticket, result });
                }
            }
            Frame::OneWay(message) => self.deliver(Delivery::OneWay { from, message }),
            Frame::Data(data) => self.deliver(Delivery::Data { from, data }),
            Frame::Hello { .. } => unreachable!("hello frames are matched above"),
        }
    }

    /// Hands a message to the application, against the delivery budget.
    fn deliver(&mut self, delivery: Delivery) {
        if !self.application_deliveries {
            self.stats.messages_dropped += 1;
            return;
        }
        self.messages_unread += delivery.room().messages;
        self.outputs.push_back(TransportOutput::Delivery(delivery));
    }

    /// Answers the callers waiting for an address dial that failed.
    fn fail_dial(&mut self, connection: &mut Connection, address: SocketAddr, reason: String) {
        for ticket in connection.dial_tickets.drain(..) {
            let result = Err(RpcError::Unreachable { address, reason: reason.clone() });
            self.outputs.push_back(TransportOutput::Connected { ticket, result });
        }
    }

    /// Checks a peer's hello against the certificate rustls verified.
    fn check_hello(&self, connection: &Connection, claimed: u64) -> Result<(), String> {
        if claimed == self.node_id {
            return Err(format!("peer claims this node's own id {claimed}"));
        }
        let identity = connection.quinn.crypto_session().peer_identity();
        let certificates = identity
            .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .ok_or_else(|| "peer presented no certificate".to_owned())?;
        let certificate = certificates.first().ok_or_else(|| "peer presented no certificate".to_owned())?;
        tls::check_identity(certificate, claimed).map_err(|error| error.to_string())
    }

    /// A connection to `peer_id` is established (`handle`, not in the map
    /// while it is being driven). Keeps one connection per peer.
    fn identified(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        connection: &mut Connection,
        peer_id: u64,
    ) {
        let peer = self.peers.entry(peer_id).or_default();
        if peer.dialing == Some(handle) {
            peer.dialing = None;
        }
        peer.reconnect_delay = Duration::ZERO;
        peer.reconnect_at = None;
        match peer.active {
            Some(other) if other != handle => {
                // Both nodes dialed: keep the connection the lower id dialed,
                // on both sides alike.
                let dialer = if connection.outbound { self.node_id } else { peer_id };
                let other_connection =
                    self.connections.get_mut(&other).expect("an active connection is open");
                if dialer == self.node_id.min(peer_id) {
                    peer.active = Some(handle);
                    for frame in other_connection.retire() {
                        connection.enqueue(frame);
                    }
                    connection.unstarted.extend(other_connection.unstarted.drain(..));
                } else {
                    for frame in connection.retire() {
                        other_connection.enqueue(frame);
                    }
                    other_connection.unstarted.extend(connection.unstarted.drain(..));
                    // The kept connection starts them when it is next driven.
                    return;
                }
            }
            Some(_) => return,
            None => peer.active = Some(handle),
        }
        for frame in std::mem::take(&mut peer.waiting) {
            connection.enqueue(frame);
        }
        connection.unstarted.extend(std::mem::take(&mut peer.waiting_transfers));
        self.start_transfers(now, handle, connection);
        let (address, inbound) = (connection.quinn.remote_address(), !connection.outbound);
        // A node sends from the socket it listens on: a peer that dialed in
        // can be dialed back there, unless an address is known already.
        let peer = self.peers.entry(peer_id).or_default();
        if peer.address.is_none() {
            peer.address = Some(address);
        }
        if inbound && self.announce_inbound {
            self.outputs.push_back(TransportOutput::Delivery(Delivery::Connected { peer: peer_id, address }));
        }
        let event = TransportEvent::Connected { peer: peer_id, address, inbound };
        self.outputs.push_back(TransportOutput::Event(event));
    }
}

fn drain_frames(decoder: &mut FrameDecoder, frames: &mut Vec<Frame>) -> Result<(), FrameError> {
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    Ok(())
}

/// The response frame to request `id`; one over the frame limit is
/// replaced by an error saying so.
fn encode_response(id: MessageId, payload: ResponsePayload) -> Bytes {
    let response = Frame::Response { id, payload }.encode();
    if response.len() - frame::FRAME_HEADER_BYTES > FRAME_BYTES_MAX {
        let payload = ResponsePayload::Error { message: "response exceeds the frame limit".into() };
        return Frame::Response { id, payload }.encode();
    }
    response
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello { .. } => "hello",
        Frame::Raft(_) => "raft",
        Frame::Request { .. } => "request",
        Frame::Response { .. } => "response",
        Frame::OneWay(_) => "one-way",
        Frame::Data(_) => "data",
    }
}
