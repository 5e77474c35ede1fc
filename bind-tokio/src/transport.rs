//! The transport on its own, addressed by socket address: dial a node,
//! accept nodes that dial in, exchange bytes, messages and verified
//! transfers with them, and answer RPC requests.
//!
//! A [`QuicTransport`] is a node loop running the core's transport without
//! a log or Raft. Peers are still authenticated nodes of the cluster: a
//! [`PeerConnection`] stands for the node whose certificate and hello
//! agree, whatever address it was reached at. The side that dialed dials
//! again after a lost connection; the side that accepted knows no address
//! for the peer, so its sends fail with `UnknownPeer` until the peer
//! reconnects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use octopii_core::transport::chunk::{ChunkSource, TransferId};
use octopii_core::transport::rpc::{
    OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcRequest, RpcResponse,
};
use octopii_core::transport::{Delivery, DeliveryBudget, LinkStats, PeerStatus, Room, TransportConfig};
use octopii_core::{Command, Reply};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::error::{OctopiiError, Result};
use crate::node_loop::{NodeLoop, TakenReporter};

/// How long [`QuicTransport::transfer_chunk_to_peers`] waits, after the
/// first peer is reached, for others to be reached too: those share one
/// digest of the body (the core's policy, re-exported).
pub use octopii_core::fanout::DIAL_GROUP_WAIT;

/// Largest transfer body a [`QuicTransport`] accepts: bodies received with
/// [`PeerConnection::recv_chunk_verified`] are held in memory whole. It is
/// also the most a transport holds of all bodies together, received or
/// being received, until the application takes them.
pub const MEMORY_TRANSFER_BYTES_MAX: u64 = 1 << 30;

/// A QUIC endpoint of one node, addressed by socket address. Share it with
/// an `Arc` (an [`RpcHandler`] holds one).
#[derive(Debug)]
pub struct QuicTransport {
    node: NodeLoop,
    /// Frees room for more once the application takes a body or message.
    taken: TakenReporter,
    routes: Arc<Routes>,
    accepted: Mutex<mpsc::UnboundedReceiver<(u64, SocketAddr)>>,
    /// One-way messages, with the sender and the room each takes.
    one_way: Mutex<mpsc::UnboundedReceiver<(u64, OneWayMessage, Room)>>,
    router: JoinHandle<()>,
}

/// The link to one authenticated node. Sends and receives go to and come
/// from that node, over whichever connection to it is current.
#[derive(Debug)]
pub struct PeerConnection {
    peer: u64,
    address: SocketAddr,
    transport: Arc<QuicTransport>,
    inbox: Arc<Inbox>,
}

/// What one peer sent, waiting to be received: data with the room each
/// takes, and transfer bodies.
#[derive(Debug)]
struct Inbox {
    data: Mutex<mpsc::UnboundedReceiver<(Bytes, Room)>>,
    chunks: Mutex<mpsc::UnboundedReceiver<Result<Bytes>>>,
}

/// The senders into each peer's inbox, filled by the router task; `None`
/// once the transport has stopped, so that every inbox ends.
#[derive(Debug)]
struct Routes {
    peers: SyncMutex<Option<BTreeMap<u64, Route>>>,
}

#[derive(Debug)]
struct Route {
    data: mpsc::UnboundedSender<(Bytes, Room)>,
    chunks: mpsc::UnboundedSender<Result<Bytes>>,
    inbox: Arc<Inbox>,
}

impl Routes {
    /// The inbox of `peer`, made on first use (an ended one once stopped).
    fn inbox(&self, peer: u64) -> Arc<Inbox> {
        let mut peers = self.peers.lock().expect("the routes lock is never poisoned");
        let new_route = || {
            let (data, data_queue) = mpsc::unbounded_channel();
            let (chunks, chunk_queue) = mpsc::unbounded_channel();
            let inbox = Arc::new(Inbox { data: Mutex::new(data_queue), chunks: Mutex::new(chunk_queue) });
            Route { data, chunks, inbox }
        };
        match peers.as_mut() {
            Some(peers) => peers.entry(peer).or_insert_with(new_route).inbox.clone(),
            None => new_route().inbox,
        }
    }

    fn with_route(&self, peer: u64, deliver: impl FnOnce(&Route)) {
        self.inbox(peer);
        let peers = self.peers.lock().expect("the routes lock is never poisoned");
        if let Some(route) = peers.as_ref().and_then(|peers| peers.get(&peer)) {
            deliver(route);
        }
    }

    /// The ids of the peers with an inbox.
    fn known(&self) -> Vec<u64> {
        let peers = self.peers.lock().expect("the routes lock is never poisoned");
        peers.iter().flat_map(BTreeMap::keys).copied().collect()
    }

    /// Ends every inbox.
    fn close(&self) {
        self.peers.lock().expect("the routes lock is never poisoned").take();
    }
}

/// The outcome of one transfer of [`QuicTransport::transfer_chunk_to_peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferResult {
    /// The address the body was sent to.
    pub peer: SocketAddr,
    /// Whether the peer received the whole body and verified it.
    pub success: bool,
    /// Body bytes the peer verified (0 on failure).
    pub bytes_transferred: u64,
    /// Whether the peer's SHA-256 of the body matched the sender's.
    pub checksum_verified: bool,
    /// How long the transfer took.
    pub duration: Duration,
    /// Why it failed.
    pub error: Option<String>,
}

impl QuicTransport {
    /// Binds `bind_addr` (port 0 picks a free one) and starts the endpoint
    /// of node `config.node_id`. Peers listed in `config.peers` can also be
    /// reached by id through a node; here they are dialed by address.
    /// Incoming transfers above [`MEMORY_TRANSFER_BYTES_MAX`] (or
    /// `config.chunk_bytes_max`, if lower) are refused, and bodies held
    /// for the application total at most that limit: a transfer that does
    /// not fit beside them waits, its sender held back by QUIC's flow
    /// control, until the application takes some with
    /// [`PeerConnection::recv_chunk_verified`].
    ///
    /// # Errors
    ///
    /// [`OctopiiError::NodeConfig`] for an invalid configuration,
    /// [`OctopiiError::Io`] if the socket cannot be bound.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn new(bind_addr: SocketAddr, mut config: TransportConfig) -> Result<Self> {
        config.announce_inbound = true;
        config.chunk_bytes_max = config.chunk_bytes_max.min(MEMORY_TRANSFER_BYTES_MAX);
        // The router collects each body whole before the application sees
        // it: room is made for a whole body before it is read.
        config.delivery_budget = DeliveryBudget::WholeBodies(config.chunk_bytes_max);
        let mut node = NodeLoop::start_transport(bind_addr, config)?;
        let (deliveries, taken) = node.take_deliveries();
        let routes = Arc::new(Routes { peers: SyncMutex::new(Some(BTreeMap::new())) });
        let (accept, accepted) = mpsc::unbounded_channel();
        let (one_way, one_way_queue) = mpsc::unbounded_channel();
        let router = tokio::spawn(route(deliveries, taken.clone(), routes.clone(), accept, one_way));
        Ok(Self {
            node,
            taken,
            routes,
            accepted: Mutex::new(accepted),
            one_way: Mutex::new(one_way_queue),
            router,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node.id()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// Connects to the node listening at `addr`, or returns the link to it
    /// if one is up. The node must hold a certificate of this cluster's CA
    /// naming the id it claims.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Rpc`] with [`RpcError::Unreachable`](octopii_core::transport::rpc::RpcError::Unreachable) if no node of
    /// the cluster answered (nobody there, another CA, a false id, or the
    /// idle timeout passed); [`OctopiiError::Shutdown`] once closed.
    pub async fn connect(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<PeerConnection>> {
        let Reply::Connected(result) = self.node.call(Command::Connect(addr)).await? else { unreachable!() };
        Ok(self.peer(result?, addr))
    }

    /// Waits for the next node that dials this one and proves its
    /// identity; a node that reconnects is announced again.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Shutdown`] once closed.
    pub async fn accept(self: &Arc<Self>) -> Result<(SocketAddr, Arc<PeerConnection>)> {
        let (peer, address) = self.accepted.lock().await.recv().await.ok_or(OctopiiError::Shutdown)?;
        Ok((address, self.peer(peer, address)))
    }

    /// Sends `data` to the node at `addr`, connecting first if needed.
    ///
    /// # Errors
    ///
    /// As [`QuicTransport::connect`] and [`PeerConnection::send`].
    pub async fn send(self: &Arc<Self>, addr: SocketAddr, data: Bytes) -> Result<()> {
        self.connect(addr).await?.send(data).await
    }

    /// Whether a connection to the node last reached at `addr` is up.
    pub async fn has_active_peer(&self, addr: SocketAddr) -> bool {
        for peer in self.routes.known() {
            if let Ok(Some(status)) = self.peer_status(peer).await
                && status.address == Some(addr)
                && status.link.is_some()
            {
                return true;
            }
        }
        false
    }

    /// Sends `chunk` to every node in `peers` at once, each transfer on a
    /// stream of its own and at its own pace, and returns one result per
    /// peer, in order. Each transfer starts as soon as its peer is
    /// reached; the peers reached within [`DIAL_GROUP_WAIT`] of the first
    /// share one SHA-256 of the body (a file must not change while it is
    /// sent: a peer whose reads see other bytes than the first reader's
    /// reports a checksum mismatch).
    pub async fn transfer_chunk_to_peers(
        self: &Arc<Self>,
        chunk: &ChunkSource,
        peers: &[SocketAddr],
    ) -> Vec<TransferResult> {
        let started = Instant::now();
        let command = Command::SendChunkToAddresses { to: peers.to_vec(), source: chunk.clone() };
        match self.node.call(command).await {
            Ok(Reply::ChunksSentTo(outcomes)) => outcomes
                .into_iter()
                .map(|(peer, outcome)| {
                    let duration =
                        outcome.as_ref().map_or_else(|_| started.elapsed(), |report| report.duration);
                    transfer_result(
                        peer,
                        outcome.map(|report| report.bytes).map_err(OctopiiError::from),
                        duration,
                    )
                })
                .collect(),
            Ok(_) => unreachable!("a transfer to addresses is answered with ChunksSentTo"),
            // The only failure: the transport has closed.
            Err(_) => peers
                .iter()
                .map(|&peer| transfer_result(peer, Err(OctopiiError::Shutdown), started.elapsed()))
                .collect(),
        }
    }

    /// Stops the endpoint: connections close (peers are told), pending
    /// requests fail, and every later call fails with
    /// [`OctopiiError::Shutdown`]. Returns once the socket is released.
    pub async fn close(&self) {
        self.node.stop().await;
    }

    fn peer(self: &Arc<Self>, peer: u64, address: SocketAddr) -> Arc<PeerConnection> {
        let inbox = self.routes.inbox(peer);
        Arc::new(PeerConnection { peer, address, transport: self.clone(), inbox })
    }

    async fn peer_status(&self, peer: u64) -> Result<Option<PeerStatus>> {
        let Reply::Peer(status) = self.node.call(Command::PeerStatus(peer)).await? else { unreachable!() };
        Ok(status)
    }

    async fn sent(&self, command: Command) -> Result<()> {
        let Reply::Sent(result) = self.node.call(command).await? else { unreachable!() };
        Ok(result?)
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.router.abort();
    }
}

impl PeerConnection {
    /// The node at the other end.
    pub fn peer_id(&self) -> u64 {
        self.peer
    }

    /// The address the node was reached at or dialed from.
    pub fn remote_address(&self) -> SocketAddr {
        self.address
    }

    /// Sends `data` to the node, in order with the other messages to it.
    /// Returns once queued: QUIC delivers it while the connection lives.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Rpc`]: too large for one frame, queue full, the
    /// node's address unknown; [`OctopiiError::Shutdown`] once closed.
    pub async fn send(&self, data: Bytes) -> Result<()> {
        self.transport.sent(Command::SendData { to: self.peer, data }).await
    }

    /// The next bytes the node sent with [`PeerConnection::send`]; `None`
    /// once the transport has closed.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for receive failures.
    pub async fn recv(&self) -> Result<Option<Bytes>> {
        let Some((data, room)) = self.inbox.data.lock().await.recv().await else { return Ok(None) };
        self.transport.taken.taken(room);
        Ok(Some(data))
    }

    /// Whether no connection to the node is up now. The transport dials
    /// again when something is sent.
    pub async fn is_closed(&self) -> bool {
        !matches!(self.transport.peer_status(self.peer).await, Ok(Some(PeerStatus { link: Some(_), .. })))
    }

    /// QUIC's figures for the connection to the node, if one is up.
    pub async fn stats(&self) -> Option<LinkStats> {
        self.transport.peer_status(self.peer).await.ok().flatten()?.link
    }

    /// Sends `chunk` on a stream of its own: its size, the body (files are
    /// read in bounded pieces), its SHA-256; returns the body's size once
    /// the node has verified the digest.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Transfer`]: the node reported a checksum mismatch
    /// or an error, the file could not be read, the connection was lost.
    pub async fn send_chunk_verified(&self, chunk: &ChunkSource) -> Result<u64> {
        let command = Command::SendChunk { to: self.peer, source: chunk.clone() };
        let Reply::ChunkSent(result) = self.transport.node.call(command).await? else { unreachable!() };
        Ok(result?.bytes)
    }

    /// The next body the node sent with
    /// [`PeerConnection::send_chunk_verified`], whole and verified; `None`
    /// once the transport has closed.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Transfer`]: the body did not match its digest, was
    /// cut short, or exceeded [`MEMORY_TRANSFER_BYTES_MAX`].
    pub async fn recv_chunk_verified(&self) -> Result<Option<Bytes>> {
        let body = self.inbox.chunks.lock().await.recv().await.transpose()?;
        if let Some(body) = &body {
            self.transport.taken.taken(Room { pieces: body.len() as u64, messages: 0 });
        }
        Ok(body)
    }
}

/// Requests, responses and one-way messages over a [`QuicTransport`].
#[derive(Clone, Debug)]
pub struct RpcHandler {
    transport: Arc<QuicTransport>,
}

impl RpcHandler {
    /// An RPC handle over `transport`.
    pub fn new(transport: Arc<QuicTransport>) -> Self {
        Self { transport }
    }

    /// Installs the function that answers requests from peers, replacing
    /// any earlier one. It runs on the transport's task: answer quickly.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Shutdown`] once the transport has closed.
    pub async fn set_request_handler<F>(&self, handler: F) -> Result<()>
    where
        F: Fn(RpcRequest) -> ResponsePayload + Send + Sync + 'static,
    {
        self.transport.node.set_request_handler(RequestHandler::new(handler)).await
    }

    /// Sends `payload` to the node at `addr` and waits for its response,
    /// at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Rpc`]: timed out, connection lost (at once, not at
    /// the deadline), node unreachable.
    pub async fn request(
        &self,
        addr: SocketAddr,
        payload: RequestPayload,
        timeout: Duration,
    ) -> Result<RpcResponse> {
        let peer = self.transport.connect(addr).await?;
        let command = Command::Request { to: peer.peer, payload, timeout };
        let Reply::Response(result) = self.transport.node.call(command).await? else { unreachable!() };
        Ok(result?)
    }

    /// Sends `message` to the node at `addr` without waiting for an answer.
    ///
    /// # Errors
    ///
    /// As [`PeerConnection::send`].
    pub async fn send_one_way(&self, addr: SocketAddr, message: OneWayMessage) -> Result<()> {
        let peer = self.transport.connect(addr).await?;
        self.transport.sent(Command::SendOneWay { to: peer.peer, message }).await
    }

    /// The next one-way message from any peer, with the sender's id; `None`
    /// once the transport has closed.
    pub async fn recv_one_way(&self) -> Option<(u64, OneWayMessage)> {
        let (from, message, room) = self.transport.one_way.lock().await.recv().await?;
        self.transport.taken.taken(room);
        Some((from, message))
    }
}

fn transfer_result(peer: SocketAddr, sent: Result<u64>, duration: Duration) -> TransferResult {
    match sent {
        Ok(bytes) => TransferResult {
            peer,
            success: true,
            bytes_transferred: bytes,
            checksum_verified: true,
            duration,
            error: None,
        },
        Err(error) => TransferResult {
            peer,
            success: false,
            bytes_transferred: 0,
            checksum_verified: false,
            duration,
            error: Some(error.to_string()),
        },
    }
}

/// Routes what the node loop delivers to the inbox of its peer, until the
/// loop stops.
async fn route(
    mut deliveries: mpsc::UnboundedReceiver<Delivery>,
    taken: TakenReporter,
    routes: Arc<Routes>,
    accept: mpsc::UnboundedSender<(u64, SocketAddr)>,
    one_way: mpsc::UnboundedSender<(u64, OneWayMessage, Room)>,
) {
    // Bodies being received, by transfer: the sender and what came so far
    // (grown as pieces arrive, never from the announced size).
    let mut bodies: BTreeMap<TransferId, (u64, BytesMut)> = BTreeMap::new();
    while let Some(delivery) = deliveries.recv().await {
        // The room a message takes until the application has it.
        let room = delivery.room();
        // A closed channel means nobody holds the receiving end any more.
        match delivery {
            Delivery::Connected { peer, address } => {
                routes.inbox(peer);
                let _ = accept.send((peer, address));
            }
            Delivery::OneWay { from, message } => {
                let _ = one_way.send((from, message, room));
            }
            Delivery::Data { from, data } => routes.with_route(from, |route| {
                let _ = route.data.send((data, room));
            }),
            Delivery::ChunkIncoming { from, transfer, .. } => {
                bodies.insert(transfer, (from, BytesMut::new()));
            }
            Delivery::ChunkData { transfer, data } => {
                if let Some((_, body)) = bodies.get_mut(&transfer) {
                    body.extend_from_slice(&data);
                }
            }
            Delivery::ChunkReceived { transfer, result } => {
                let Some((from, body)) = bodies.remove(&transfer) else { continue };
                if result.is_err() {
                    // Nobody will take what came of a failed body.
                    taken.taken(Room { pieces: body.len() as u64, messages: 0 });
                }
                let result = result.map(|_| body.freeze()).map_err(OctopiiError::from);
                routes.with_route(from, |route| {
                    let _ = route.chunks.send(result);
                });
            }
        }
    }
    routes.close();
}
