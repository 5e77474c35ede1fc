//! A replicated node on tokio: one task owns the kernel and the UDP socket,
//! one thread executes disk operations; callers on any task send commands
//! and await the answer.
//!
//! The task decides nothing. It feeds what arrived (datagrams, commands,
//! disk completions, the timer) to the [`Driver`], asks it to drain the
//! kernel's outputs, and executes what comes out: datagrams go to the
//! socket, one-way messages and data to [`NodeLoop::recv_delivery`].

use std::collections::VecDeque;
use std::future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use octopii_core::Kernel;
use octopii_core::KernelConfigError;
use octopii_core::disk::DiskCompletion;
use octopii_core::transport::rpc::RequestHandler;
use octopii_core::transport::{Room, Transmit, TransportConfig};
use octopii_core::{Command, Reply};
use octopii_mio::NodeOptions;
use octopii_mio::disk::{DiskThread, FileDisk};
use octopii_mio::driver::{Delivery, Driver, Executor, ReplySink};
use octopii_mio::node::{feed_received, offload};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{OctopiiError, Result};

/// The largest UDP payload received.
const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// Datagrams read in one wake-up before the kernel's outputs are drained;
/// the rest are read on the next turn, so a flood cannot starve the timer.
const DATAGRAMS_PER_WAKE_MAX: usize = 1024;
/// Buffers filled by one receive system call.
const RECEIVE_BATCH_MAX: usize = 8;
/// Commands waiting for the loop; beyond it, [`NodeLoop::call`] waits.
const COMMANDS_QUEUED_MAX: usize = 1024;
/// Datagrams kept while the socket's send buffer is full; beyond it they
/// are dropped, as the network would (QUIC retransmits).
const UNSENT_DATAGRAMS_MAX: usize = 4096;
/// How long a stopping node keeps its socket to tell peers it is leaving.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(50);

enum Request {
    Command {
        command: Command,
        reply: ReplySink,
    },
    Handler(RequestHandler),
    /// The application took deliveries that took this room.
    Taken(Room),
    /// Stop the loop; the sender is dropped once it has stopped.
    Stop(oneshot::Sender<()>),
}

/// A node running on a task of the current tokio runtime, and the handle
/// to it. Share it with an `Arc` to call it from many tasks.
///
/// Dropping the handle stops the node as [`NodeLoop::shutdown`] does, but
/// without waiting for the data directory to be released.
#[derive(Debug)]
pub struct NodeLoop {
    id: u64,
    local_addr: SocketAddr,
    requests: mpsc::Sender<Request>,
    /// Unbounded, like the mio node's: a dropped piece of a transfer would
    /// leave the receiver with a body its verdict calls verified. Transfer
    /// bodies are bounded instead at the source: the kernel reads no more
    /// of them while `TransportConfig::delivery_budget` is spent
    /// ([`NodeLoop::recv_delivery`] reports what it takes).
    deliveries: Mutex<mpsc::UnboundedReceiver<Delivery>>,
    task: JoinHandle<()>,
    /// The runtime the node's task runs on.
    task_runtime: Handle,
}

impl NodeLoop {
    /// Binds the socket, opens and locks the data directory, and spawns the
    /// node's task on the current runtime. The node recovers its log before
    /// it answers commands (they wait).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::NodeConfig`] for an invalid configuration,
    /// [`OctopiiError::Io`] if the socket cannot be bound or the directory
    /// cannot be used (for example, another running node holds it).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(options: NodeOptions) -> Result<Self> {
        Self::start_on(options, &Handle::current())
    }

    /// As [`NodeLoop::start`], on the runtime of `runtime` (callable from
    /// any thread, inside a runtime or not).
    ///
    /// # Errors
    ///
    /// As [`NodeLoop::start`].
    pub fn start_on(options: NodeOptions, runtime: &Handle) -> Result<Self> {
        let _entered = runtime.enter();
        let (socket, udp, transport) = bind(options.bind_addr, options.transport)?;
        let kernel =
            Kernel::new_networked_node(options.kernel, options.node, options.state_machine, transport)?;
        // A directory creation and a lock: metadata calls, not data.
        let disk = FileDisk::open(&options.data_dir)?;
        Self::spawn(kernel, socket, udp, Some(disk))
    }

    /// Binds the socket and spawns a loop running `transport` alone: no
    /// log, no Raft (see [`Kernel::new_transport`]).
    pub(crate) fn start_transport(bind_addr: SocketAddr, transport: TransportConfig) -> Result<Self> {
        let _entered = Handle::current().enter();
        let (socket, udp, transport) = bind(bind_addr, transport)?;
        let kernel = Kernel::new_transport(transport).map_err(KernelConfigError::from)?;
        Self::spawn(kernel, socket, udp, None)
    }

    fn spawn(
        kernel: Kernel,
        socket: UdpSocket,
        udp: quinn_udp::UdpSocketState,
        disk: Option<FileDisk>,
    ) -> Result<Self> {
        let id = kernel.transport().expect("a node loop runs a transport").node_id();
        let local_addr = socket.local_addr()?;
        let (completions, completion_queue) = mpsc::unbounded_channel::<Vec<DiskCompletion>>();
        let executor = match disk {
            Some(disk) => {
                Executor::Thread(DiskThread::spawn(disk, move |done| completions.send(done).is_ok())?)
            }
            None => Executor::None,
        };
        let driver = Driver::new(kernel, executor);
        let (requests, request_queue) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let (deliver, deliveries) = mpsc::unbounded_channel();
        let state = Loop {
            socket,
            udp,
            driver,
            requests: request_queue,
            completions: completion_queue,
            deliver,
            unsent: VecDeque::new(),
            stopped: Vec::new(),
        };
        let task_runtime = Handle::current();
        let task = task_runtime.spawn(state.run());
        Ok(Self { id, local_addr, requests, deliveries: Mutex::new(deliveries), task, task_runtime })
    }

    /// The node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the node's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `command` and waits for its answer. While
    /// 1024 commands wait for the loop, this waits for room first.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Shutdown`] if the node's task has stopped.
    pub async fn call(&self, command: Command) -> Result<Reply> {
        let (reply, answer) = oneshot::channel();
        let sink: ReplySink = Box::new(move |answer| {
            let _ = reply.send(answer);
        });
        self.send(Request::Command { command, reply: sink }).await?;
        answer.await.map_err(|_| OctopiiError::Shutdown)
    }

    /// Installs the handler for incoming RPC requests, replacing any earlier
    /// one. Without a handler, requests are answered with an error payload.
    ///
    /// The handler runs on the node's task, so it must answer quickly: while
    /// it runs, the node serves nothing else, and neither do the tasks
    /// queued behind it on the same worker. A handler that must block should
    /// wrap the wait in [`tokio::task::block_in_place`] (multi-threaded
    /// runtime), which hands those tasks to another thread.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Shutdown`] if the node's task has stopped.
    pub async fn set_request_handler(&self, handler: RequestHandler) -> Result<()> {
        self.send(Request::Handler(handler)).await
    }

    /// The next one-way message, data or transfer piece from a peer; `None`
    /// once the node has stopped. Nothing is dropped: what is not read
    /// waits in memory, up to [`TransportConfig::delivery_budget`] (the
    /// node reads no more from its peers until this takes some).
    pub async fn recv_delivery(&self) -> Option<Delivery> {
        let delivery = self.deliveries.lock().await.recv().await;
        if let Some(delivery) = &delivery {
            report_taken(&self.requests, &self.task_runtime, delivery.room());
        }
        delivery
    }

    /// Stops the node as [`NodeLoop::shutdown`] does, from a shared handle;
    /// returns once it has stopped. Later calls fail with
    /// [`OctopiiError::Shutdown`].
    pub(crate) async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.send(Request::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Asks the node to stop without waiting; the receiver ends once it
    /// has stopped.
    pub(crate) fn request_stop(&self) -> oneshot::Receiver<()> {
        let (done, stopped) = oneshot::channel();
        if let Err(mpsc::error::TrySendError::Full(request)) = self.requests.try_send(Request::Stop(done)) {
            // The queue is full: the stop waits its turn on the node's own
            // runtime.
            let requests = self.requests.clone();
            self.task_runtime.spawn(async move {
                let _ = requests.send(request).await;
            });
        }
        stopped
    }

    /// The receiver of deliveries, for a wrapper that routes them itself
    /// ([`NodeLoop::recv_delivery`] then sees nothing), and the way to tell
    /// the node what of them the application took: a weak handle, so that
    /// the node still stops when this handle goes.
    pub(crate) fn take_deliveries(&mut self) -> (mpsc::UnboundedReceiver<Delivery>, TakenReporter) {
        let deliveries = std::mem::replace(self.deliveries.get_mut(), mpsc::unbounded_channel().1);
        (deliveries, TakenReporter(self.requests.downgrade(), self.task_runtime.clone()))
    }

    /// Stops the node: pending requests fail, peers are told (for about
    /// 50 ms), then the disk thread finishes the operations already queued.
    /// Returns once the socket and the data directory are released, so the
    /// directory can be opened again at once.
    pub async fn shutdown(self) {
        let Self { requests, task, .. } = self;
        // The loop stops once every sender is gone; the handle holds the
        // only one.
        drop(requests);
        if let Err(error) = task.await {
            tracing::error!(%error, "node task failed");
        }
    }

    async fn send(&self, request: Request) -> Result<()> {
        self.requests.send(request).await.map_err(|_| OctopiiError::Shutdown)
    }
}

/// Tells a node that the application took deliveries a wrapper routed
/// (see `TransportConfig::delivery_budget`).
#[derive(Clone, Debug)]
pub(crate) struct TakenReporter(mpsc::WeakSender<Request>, Handle);

impl TakenReporter {
    pub(crate) fn taken(&self, room: Room) {
        // A stopped node reads nothing more anyway.
        if let Some(requests) = self.0.upgrade() {
            report_taken(&requests, &self.1, room);
        }
    }
}

/// Tells the node that deliveries taking `room` were taken, without
/// waiting: a receive that awaited this after taking its delivery would
/// lose it (and its room) if the caller gave up on it there.
/// If the queue is full, a task on the node's runtime waits for room (the
/// caller may not be on a tokio runtime at all).
fn report_taken(requests: &mpsc::Sender<Request>, runtime: &Handle, room: Room) {
    if room.is_empty() {
        return;
    }
    if let Err(mpsc::error::TrySendError::Full(request)) = requests.try_send(Request::Taken(room)) {
        let requests = requests.clone();
        runtime.spawn(async move { requests.send(request).await });
    }
}

/// What woke the loop.
enum Wake {
    Readable(io::Result<()>),
    Request(Option<Request>),
    Disk(Option<Vec<DiskCompletion>>),
    Writable(io::Result<()>),
    Timer,
}

struct Loop {
    socket: UdpSocket,
    /// Segmentation offload for sends (GSO) and receives (GRO).
    udp: quinn_udp::UdpSocketState,
    driver: Driver,
    requests: mpsc::Receiver<Request>,
    completions: mpsc::UnboundedReceiver<Vec<DiskCompletion>>,
    deliver: mpsc::UnboundedSender<Delivery>,
    /// Datagrams waiting for the socket to become writable, oldest first.
    unsent: VecDeque<Transmit>,
    /// Told (by being dropped) once the loop has stopped.
    stopped: Vec<oneshot::Sender<()>>,
}

impl Loop {
    async fn run(mut self) {
        let mut buffers = vec![vec![0; DATAGRAM_BYTES_MAX]; RECEIVE_BATCH_MAX];
        let mut stopping_until: Option<Instant> = None;
        // Without a disk thread the channel's sender is gone at once.
        let mut disk_running = matches!(self.driver.executor(), Executor::Thread(_));
        // The kernel's first outputs, from `Driver::new`.
        self.flush();
        loop {
            let mut deadline = self.driver.next_timeout();
            if let Some(stop) = stopping_until {
                deadline = Some(deadline.map_or(stop, |at| at.min(stop)));
            }
            let wake = tokio::select! {
                readable = self.socket.readable() => Wake::Readable(readable),
                request = self.requests.recv(), if stopping_until.is_none() => Wake::Request(request),
                done = self.completions.recv(), if disk_running => Wake::Disk(done),
                writable = self.socket.writable(), if !self.unsent.is_empty() => Wake::Writable(writable),
                () = sleep_until(deadline) => Wake::Timer,
            };
            let now = clock();
            let mut requests_open = stopping_until.is_none();
            match wake {
                Wake::Request(Some(request)) => requests_open = self.feed_request(now, request),
                Wake::Request(None) => requests_open = false,
                Wake::Disk(Some(done)) => self.driver.disk_done(now, done),
                Wake::Disk(None) => {
                    // The disk thread only stops while the loop runs if it
                    // died: the log can make no progress.
                    tracing::error!("node's disk thread stopped; stopping the node");
                    disk_running = false;
                    requests_open = false;
                }
                Wake::Readable(Err(error)) => tracing::debug!(%error, "udp socket"),
                Wake::Writable(Err(error)) => tracing::debug!(%error, "udp socket"),
                Wake::Readable(Ok(())) | Wake::Writable(Ok(())) | Wake::Timer => {}
            }
            // Take whatever else is waiting, so that commands fed together
            // share one log batch and a burst of datagrams is one drain.
            if requests_open {
                requests_open = self.take_requests(now);
            }
            if stopping_until.is_none() && !requests_open {
                self.driver.shutdown(now);
                stopping_until = Some(now + SHUTDOWN_LINGER);
            }
            while let Ok(done) = self.completions.try_recv() {
                self.driver.disk_done(now, done);
            }
            self.take_datagrams(now, &mut buffers);
            self.driver.timeout(now);
            self.driver.drain();
            self.flush();
            if stopping_until.is_some_and(|stop| now >= stop) {
                break;
            }
        }
        let Self { socket, driver, stopped, .. } = self;
        drop(socket);
        // Joining the disk thread waits for its last operations (a sync,
        // perhaps): keep that off the runtime's workers.
        if tokio::task::spawn_blocking(move || driver.close()).await.is_err() {
            tracing::warn!("node's disk thread was not joined");
        }
        drop(stopped);
    }

    /// Feeds one request; `false` if it asks the loop to stop.
    fn feed_request(&mut self, now: Instant, request: Request) -> bool {
        match request {
            Request::Command { command, reply } => self.driver.command(now, command, reply),
            Request::Handler(handler) => self.driver.set_request_handler(handler),
            Request::Taken(room) => self.driver.deliveries_taken(now, room),
            Request::Stop(done) => {
                self.stopped.push(done);
                return false;
            }
        }
        true
    }

    /// Feeds every waiting request; `false` once every caller has gone or
    /// one asked to stop.
    fn take_requests(&mut self, now: Instant) -> bool {
        for _ in 0..COMMANDS_QUEUED_MAX {
            match self.requests.try_recv() {
                Ok(request) => {
                    if !self.feed_request(now, request) {
                        return false;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    /// Reads datagrams already queued on the socket, without waiting. The
    /// socket may coalesce datagrams (GRO): a buffer then holds several of
    /// `stride` bytes each.
    fn take_datagrams(&mut self, now: Instant, buffers: &mut [Vec<u8>]) {
        let mut metas = [quinn_udp::RecvMeta::default(); RECEIVE_BATCH_MAX];
        let mut taken = 0;
        while taken < DATAGRAMS_PER_WAKE_MAX {
            let mut slices: Vec<io::IoSliceMut<'_>> =
                buffers.iter_mut().map(|buffer| io::IoSliceMut::new(buffer)).collect();
            let received = self
                .socket
                .try_io(Interest::READABLE, || self.udp.recv((&self.socket).into(), &mut slices, &mut metas));
            match received {
                Ok(count) => {
                    taken += feed_received(&mut self.driver, now, &metas, &slices, count);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on some systems; the datagram is
                // lost either way.
                Err(error) => {
                    tracing::debug!(%error, "udp receive");
                    return;
                }
            }
        }
    }

    /// Sends the kernel's datagrams until the socket pushes back (the rest
    /// wait for it to become writable) and hands deliveries to the handle.
    fn flush(&mut self) {
        self.unsent.extend(self.driver.take_transmits());
        while let Some(transmit) = self.unsent.front() {
            let offload = offload(transmit);
            let sent =
                self.socket.try_io(Interest::WRITABLE, || self.udp.send((&self.socket).into(), &offload));
            match sent {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // The datagrams are lost, as the network may lose them.
                Err(error) => tracing::debug!(%error, to = %transmit.destination, "udp send"),
            }
            self.unsent.pop_front();
        }
        while self.unsent.len() > UNSENT_DATAGRAMS_MAX {
            self.unsent.pop_front();
        }
        for delivery in self.driver.take_deliveries() {
            // A closed channel: the handle is gone and nobody reads.
            let _ = self.deliver.send(delivery);
        }
    }
}

/// Binds a UDP socket with segmentation offload, and tells the transport
/// how many datagrams one send may carry.
fn bind(
    address: SocketAddr,
    mut transport: TransportConfig,
) -> Result<(UdpSocket, quinn_udp::UdpSocketState, TransportConfig)> {
    let socket = UdpSocket::from_std(octopii_mio::node::bind_udp(address)?)?;
    let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
    // Several datagrams per send system call (see TRANSMIT_SEGMENTS_MAX).
    transport.max_transmit_segments = udp.max_gso_segments().min(octopii_mio::node::TRANSMIT_SEGMENTS_MAX);
    transport.datagrams_may_fragment = udp.may_fragment();
    Ok((socket, udp, transport))
}

/// The loop's clock: tokio's, so that a runtime with paused time drives
/// the kernel's timers too.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => future::pending().await,
    }
}
