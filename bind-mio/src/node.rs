//! A replicated node on a blocking loop: one thread owns the kernel and the
//! UDP socket, one thread executes disk operations; callers on any thread
//! send commands and block on the answer.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use octopii_core::disk::DiskCompletion;
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::StateMachine;
use octopii_core::transport::rpc::RequestHandler;
use octopii_core::transport::{Room, Transmit, TransportConfig};
use octopii_core::{Command, Kernel, KernelConfig, KernelConfigError, Reply};

use crate::disk::{DiskThread, FileDisk};
use crate::driver::{Delivery, Driver, Executor, ReplySink};

const WAKE: Token = Token(0);
const SOCKET: Token = Token(1);
/// The largest UDP payload received (with receive offload, a buffer holds
/// several datagrams).
const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// Datagrams sent in one system call at most (the core sends fewer when
/// larger ones would pass one UDP payload: 40 of Ethernet's 1500 bytes, 7
/// of a jumbo frame's). The `quinn` crate sends 10, to allocate less per
/// transmit; here a transmit's buffer is handed to the socket without a
/// copy, and 40 cut the CPU time of a bulk transfer at Ethernet's MTU by
/// about 4% against 10 (fewer system calls and fewer buffers per byte).
pub const TRANSMIT_SEGMENTS_MAX: usize = 40;
/// Buffers filled by one receive system call.
const RECEIVE_BATCH_MAX: usize = 8;
/// Datagrams kept while the socket's send buffer is full; beyond it they
/// are dropped, as the network would (QUIC retransmits).
const UNSENT_DATAGRAMS_MAX: usize = 4096;
/// How long a stopping node keeps its socket to tell peers it is leaving.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(50);

/// Bytes the kernel may buffer for the node's socket each way: a burst of
/// QUIC datagrams arrives faster than a loop turn, and a datagram the
/// kernel drops costs a retransmission and a smaller congestion window.
/// Linux caps it at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds a non-blocking UDP socket with [`SOCKET_BUFFER_BYTES`] of kernel
/// buffer each way (or as much as the system allows).
///
/// # Errors
///
/// The address cannot be bound.
pub fn bind_udp(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer only costs throughput.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// `transmit` as quinn-udp sends it: one system call, segmented by the
/// kernel when it holds several datagrams.
pub fn offload(transmit: &Transmit) -> quinn_udp::Transmit<'_> {
    quinn_udp::Transmit {
        destination: transmit.destination,
        ecn: None,
        contents: &transmit.contents,
        segment_size: transmit.segment_size.filter(|&size| size < transmit.contents.len()),
        src_ip: None,
    }
}

/// Hands `driver` the datagrams of one quinn-udp receive that filled
/// `count` buffers; returns how many datagrams that was. With receive
/// offload a buffer holds several datagrams of `stride` bytes each.
pub fn feed_received(
    driver: &mut Driver,
    now: Instant,
    metas: &[quinn_udp::RecvMeta],
    buffers: &[io::IoSliceMut<'_>],
    count: usize,
) -> usize {
    let mut fed = 0;
    for (meta, buffer) in metas.iter().zip(buffers).take(count) {
        // One allocation and one copy per buffer (as the `quinn` crate
        // does): its datagrams are slices of it, which QUIC decrypts in
        // place. The buffer is freed once the last of them is.
        let mut received = BytesMut::from(&buffer[..meta.len]);
        let stride = meta.stride.max(1);
        while !received.is_empty() {
            let datagram = received.split_to(stride.min(received.len()));
            driver.datagram(now, meta.addr, datagram);
            fed += 1;
        }
    }
    fed
}

/// Everything a node needs to start.
pub struct NodeOptions {
    /// Where the node's log lives (locked while the node runs).
    pub data_dir: PathBuf,
    /// The UDP address to listen on; port 0 picks a free one.
    pub bind_addr: SocketAddr,
    /// The log's tuning.
    pub kernel: KernelConfig,
    /// Raft's settings, including the node's id.
    pub node: NodeConfig,
    /// QUIC and TLS settings; its node id must be the node's.
    pub transport: TransportConfig,
    /// The state machine the node applies.
    pub state_machine: StateMachine,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeOptions")
            .field("data_dir", &self.data_dir)
            .field("bind_addr", &self.bind_addr)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Why a node could not start or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    /// The data directory, the socket or a thread could not be set up.
    #[error("node i/o: {0}")]
    Io(#[from] io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] KernelConfigError),
    /// The node's loop has stopped.
    #[error("the node has shut down")]
    Closed,
}

enum Request {
    Command {
        command: Command,
        reply: ReplySink,
    },
    Handler(RequestHandler),
    /// The application took deliveries that took this room.
    Taken(Room),
}

/// A running node. Every method may be called from any thread.
#[derive(Debug)]
pub struct Node {
    id: u64,
    local_addr: SocketAddr,
    requests: Option<mpsc::Sender<Request>>,
    waker: Arc<Waker>,
    woken: Arc<AtomicBool>,
    /// Deliveries arrive a loop turn's worth at a time; the queue holds
    /// the rest of the last batch.
    deliveries: Mutex<(mpsc::Receiver<Vec<Delivery>>, VecDeque<Delivery>)>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Binds the socket, opens the log and starts the loop. The node
    /// recovers its state before it answers commands (they wait).
    ///
    /// # Errors
    ///
    /// An invalid configuration, or a directory or socket that cannot be
    /// used (for example, the log is held by another running node).
    pub fn start(options: NodeOptions) -> Result<Self, LoopError> {
        let id = options.node.id;
        let mut socket = UdpSocket::from_std(bind_udp(options.bind_addr)?);
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        let mut transport = options.transport;
        // The socket sends this many datagrams in one system call; a batch
        // must also stay within a UDP payload (64 KiB), or the kernel
        // refuses it whole.
        transport.max_transmit_segments = udp.max_gso_segments().min(TRANSMIT_SEGMENTS_MAX);
        transport.datagrams_may_fragment = udp.may_fragment();
        let kernel =
            Kernel::new_networked_node(options.kernel, options.node, options.state_machine, transport)?;
        let disk = FileDisk::open(&options.data_dir)?;
        let local_addr = socket.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut socket, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let woken = Arc::new(AtomicBool::new(false));

        let (completions, completion_queue) = mpsc::channel::<Vec<DiskCompletion>>();
        let disk_waker = Arc::clone(&waker);
        let disk =
            DiskThread::spawn(disk, move |done| completions.send(done).is_ok() && disk_waker.wake().is_ok())?;
        let driver = Driver::new(kernel, Executor::Thread(disk));
        let (requests, request_queue) = mpsc::channel();
        let (deliver, deliveries) = mpsc::channel();
        let loop_woken = Arc::clone(&woken);
        let state = Loop {
            poll,
            socket,
            udp,
            driver,
            requests: request_queue,
            completions: completion_queue,
            deliver,
        };
        let thread = thread::Builder::new()
            .name(format!("octopii-node-{id}"))
            .spawn(move || state.run(&loop_woken))?;
        Ok(Self {
            id,
            local_addr,
            requests: Some(requests),
            waker,
            woken,
            deliveries: Mutex::new((deliveries, VecDeque::new())),
            thread: Some(thread),
        })
    }

    /// The node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the node's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `command` and waits for its answer.
    ///
    /// # Errors
    ///
    /// [`LoopError::Closed`] if the node has stopped.
    pub fn call(&self, command: Command) -> Result<Reply, LoopError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(
            command,
            Box::new(move |answer| {
                let _ = reply.send(answer);
            }),
        )?;
        answer.recv().map_err(|_| LoopError::Closed)
    }

    /// Hands `command` to the loop without waiting; `reply` receives the
    /// answer on the loop's thread (it must not block).
    ///
    /// # Errors
    ///
    /// [`LoopError::Closed`] if the node has stopped.
    pub fn submit(&self, command: Command, reply: ReplySink) -> Result<(), LoopError> {
        self.send(Request::Command { command, reply })
    }

    /// Installs the handler for incoming RPC requests.
    ///
    /// # Errors
    ///
    /// [`LoopError::Closed`] if the node has stopped.
    pub fn set_request_handler(&self, handler: RequestHandler) -> Result<(), LoopError> {
        self.send(Request::Handler(handler))
    }

    /// The next one-way message or data from a peer, waiting at most
    /// `timeout`. Messages and transfer bodies are read from peers only as
    /// fast as this takes them: at most
    /// [`TransportConfig::delivery_budget`](octopii_core::transport::TransportConfig::delivery_budget)
    /// wait here.
    pub fn recv_delivery(&self, timeout: Duration) -> Option<Delivery> {
        let mut guard = self.deliveries.lock().expect("delivery lock is never poisoned");
        let (channel, ready) = &mut *guard;
        if ready.is_empty() {
            ready.extend(channel.recv_timeout(timeout).ok()?);
        }
        let delivery = ready.pop_front();
        let room = delivery.as_ref().map_or_else(Room::default, Delivery::room);
        if !room.is_empty() {
            // A stopped node reads nothing more anyway.
            let _ = self.send(Request::Taken(room));
        }
        delivery
    }

    /// Stops the node: pending requests fail, peers are told, then the
    /// socket and the log directory are released before this returns.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn send(&self, request: Request) -> Result<(), LoopError> {
        let requests = self.requests.as_ref().ok_or(LoopError::Closed)?;
        requests.send(request).map_err(|_| LoopError::Closed)?;
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake()?;
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.requests = None;
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Loop {
    poll: Poll,
    socket: UdpSocket,
    /// Segmentation offload for sends (GSO) and receives (GRO).
    udp: quinn_udp::UdpSocketState,
    driver: Driver,
    requests: mpsc::Receiver<Request>,
    completions: mpsc::Receiver<Vec<DiskCompletion>>,
    deliver: mpsc::Sender<Vec<Delivery>>,
}

impl Loop {
    fn run(mut self, woken: &AtomicBool) {
        let mut events = Events::with_capacity(64);
        let mut buffers = vec![vec![0; DATAGRAM_BYTES_MAX]; RECEIVE_BATCH_MAX];
        let mut metas = vec![quinn_udp::RecvMeta::default(); RECEIVE_BATCH_MAX];
        let mut unsent = VecDeque::new();
        let mut watching_writable = false;
        let mut stopping_until: Option<Instant> = None;
        loop {
            let mut deadline = self.driver.next_timeout();
            if let Some(stop) = stopping_until {
                deadline = Some(deadline.map_or(stop, |at| at.min(stop)));
            }
            let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "node loop cannot poll; stopping");
                break;
            }
            let now = Instant::now();
            woken.store(false, Ordering::Release);
            if stopping_until.is_none() && !self.take_requests(now) {
                self.driver.shutdown(now);
                stopping_until = Some(now + SHUTDOWN_LINGER);
            }
            while let Ok(done) = self.completions.try_recv() {
                self.driver.disk_done(now, done);
            }
            loop {
                let mut slices: Vec<io::IoSliceMut<'_>> =
                    buffers.iter_mut().map(|buffer| io::IoSliceMut::new(buffer)).collect();
                match self.udp.recv((&self.socket).into(), &mut slices, &mut metas) {
                    Ok(count) => {
                        feed_received(&mut self.driver, now, &metas, &slices, count);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => {
                        // ICMP errors surface here on some systems; the
                        // datagram is lost either way.
                        tracing::debug!(%error, "udp receive");
                        break;
                    }
                }
            }
            self.driver.timeout(now);
            self.driver.drain();
            unsent.extend(self.driver.take_transmits());
            self.send(&mut unsent);
            if watching_writable == unsent.is_empty() {
                watching_writable = !unsent.is_empty();
                let interest = if watching_writable {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if let Err(error) = self.poll.registry().reregister(&mut self.socket, SOCKET, interest) {
                    tracing::error!(%error, "cannot watch the node's socket");
                }
            }
            let deliveries = self.driver.take_deliveries();
            if !deliveries.is_empty() {
                let _ = self.deliver.send(deliveries);
            }
            if stopping_until.is_some_and(|stop| now >= stop) {
                break;
            }
        }
        self.driver.close();
    }

    /// Feeds every waiting request; `false` once every caller has gone.
    fn take_requests(&mut self, now: Instant) -> bool {
        loop {
            match self.requests.try_recv() {
                Ok(Request::Command { command, reply }) => self.driver.command(now, command, reply),
                Ok(Request::Handler(handler)) => self.driver.set_request_handler(handler),
                Ok(Request::Taken(room)) => self.driver.deliveries_taken(now, room),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Sends datagrams until the socket pushes back; the rest wait for it to
    /// become writable.
    fn send(&self, unsent: &mut VecDeque<Transmit>) {
        while let Some(transmit) = unsent.front() {
            match self.udp.send((&self.socket).into(), &offload(transmit)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // The datagrams are lost, as the network may lose them.
                Err(error) => tracing::debug!(%error, to = %transmit.destination, "udp send"),
            }
            unsent.pop_front();
        }
        while unsent.len() > UNSENT_DATAGRAMS_MAX {
            unsent.pop_front();
        }
    }
}
