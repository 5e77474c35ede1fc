//! The loop body every binding runs: feed inputs to the kernel, then execute
//! what it asks for. It decides nothing.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use bytes::BytesMut;
use octopii_core::disk::DiskCompletion;
use octopii_core::raft::{NodeError, ReplicaEvent};
use octopii_core::transport::chunk::TransferId;
use octopii_core::transport::{Room, Transmit, TransportEvent};
use octopii_core::{Command, CommandId, Event, Input, Kernel, Output, Reply};

use crate::disk::{DiskThread, FileDisk};

/// Where the reply to one command goes.
pub type ReplySink = Box<dyn FnOnce(Reply) + Send>;

/// Who executes the kernel's disk operations.
#[derive(Debug)]
pub enum Executor {
    /// The loop's own thread, at once: for a loop with nothing else to
    /// serve (a standalone log), one thread hop fewer per request.
    Inline(FileDisk),
    /// A disk thread, so that the loop keeps serving other inputs (the
    /// network) while a sync runs; completions come back as inputs.
    Thread(DiskThread),
    /// No disk: a kernel running a transport alone never asks for disk work.
    None,
}

pub use octopii_core::transport::Delivery;

/// Datagram bytes one [`Driver::drain`] collects before it stops executing
/// file reads: the loop then sends them, and takes the peers'
/// acknowledgements and credit, before the next pieces of a transfer are
/// read and packed. Without it, a sender builds a whole flow control
/// window of packets before the first leaves, and the receiver idles.
pub const DRAIN_TRANSMIT_BYTES_MAX: usize = 256 * 1024;

/// A file read asked for by the kernel, not yet executed.
struct FileReadRequest {
    transfer: TransferId,
    path: PathBuf,
    offset: u64,
    len: usize,
}

/// Owns a kernel and its disk executor, and delivers replies. Datagrams to
/// send and deliveries for the application are collected for the loop,
/// which owns the socket.
pub struct Driver {
    kernel: Kernel,
    executor: Executor,
    waiters: BTreeMap<CommandId, ReplySink>,
    next_command: u64,
    transmits: Vec<Transmit>,
    /// Bytes in `transmits`.
    transmit_bytes: usize,
    deliveries: Vec<Delivery>,
    received: Vec<(SocketAddr, BytesMut)>,
    received_at: Instant,
    /// File reads held back by [`DRAIN_TRANSMIT_BYTES_MAX`] (at most a
    /// few per transfer: the kernel asks for the next piece only after the
    /// last one came back), and since when.
    reads: VecDeque<FileReadRequest>,
    reads_held_at: Instant,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Driver")
            .field("kernel", &self.kernel)
            .field("waiting", &self.waiters.len())
            .finish()
    }
}

impl Driver {
    /// Takes over a freshly built kernel and executes its first outputs.
    pub fn new(kernel: Kernel, executor: Executor) -> Self {
        let mut driver = Self {
            kernel,
            executor,
            waiters: BTreeMap::new(),
            next_command: 0,
            transmits: Vec::new(),
            transmit_bytes: 0,
            deliveries: Vec::new(),
            received: Vec::new(),
            received_at: Instant::now(),
            reads: VecDeque::new(),
            reads_held_at: Instant::now(),
        };
        driver.drain();
        driver
    }

    /// Passes a caller's command; `sink` receives the reply. Call
    /// [`Driver::drain`] after the inputs of one wake-up: commands fed
    /// together share one log batch.
    pub fn command(&mut self, now: Instant, command: Command, sink: ReplySink) {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        self.waiters.insert(id, sink);
        self.kernel.handle_input(now, Input::Command { id, command });
    }

    /// Passes completions from a disk thread, in the order delivered.
    pub fn disk_done(&mut self, now: Instant, completions: Vec<DiskCompletion>) {
        for completion in completions {
            self.kernel.handle_input(now, Input::Disk(completion));
        }
    }

    /// Takes a datagram that arrived on the node's socket. Datagrams are
    /// handed to the kernel as one batch by [`Driver::drain`], so that one
    /// acknowledgement and one round of answers cover a whole read burst.
    pub fn datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        self.received_at = now;
        self.received.push((from, data));
    }

    /// Installs the handler for incoming RPC requests.
    pub fn set_request_handler(&mut self, handler: octopii_core::transport::rpc::RequestHandler) {
        self.kernel.set_request_handler(handler);
    }

    /// Starts an orderly stop: see [`Kernel::shutdown`].
    pub fn shutdown(&mut self, now: Instant) {
        self.kernel.shutdown(now);
    }

    /// The datagrams to send, in order, since the last call.
    pub fn take_transmits(&mut self) -> Vec<Transmit> {
        self.transmit_bytes = 0;
        std::mem::take(&mut self.transmits)
    }

    /// What peers sent for the application since the last call.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// The application took deliveries that took `room` (the sum of their
    /// [`Delivery::room`]): what was held back for them is read on.
    pub fn deliveries_taken(&mut self, now: Instant, room: Room) {
        self.kernel.handle_input(now, Input::DeliveriesTaken(room));
    }

    /// Who executes the disk operations.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The kernel, for reading its state.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Passes a timeout if the kernel's timer has expired at `now`.
    pub fn timeout(&mut self, now: Instant) {
        if self.kernel.poll_timeout().is_some_and(|(deadline, _reason)| deadline <= now) {
            self.kernel.handle_input(now, Input::Timeout);
        }
    }

    /// When [`Driver::timeout`] and [`Driver::drain`] should next be
    /// called: at once while file reads are held back.
    pub fn next_timeout(&self) -> Option<Instant> {
        let kernel = self.kernel.poll_timeout().map(|(deadline, _reason)| deadline);
        if self.reads.is_empty() {
            kernel
        } else {
            Some(kernel.map_or(self.reads_held_at, |deadline| deadline.min(self.reads_held_at)))
        }
    }

    /// Executes everything the kernel asks for until it asks for nothing:
    /// disk operations go to the executor (inline ones complete here, and
    /// their completions are fed back at once), replies to their callers.
    /// File reads for transfers run here too, until the datagrams collected
    /// since [`Driver::take_transmits`] pass [`DRAIN_TRANSMIT_BYTES_MAX`];
    /// the rest wait for the next call, and [`Driver::next_timeout`] asks
    /// for it at once.
    pub fn drain(&mut self) {
        if !self.received.is_empty() {
            let datagrams = std::mem::take(&mut self.received);
            self.kernel.handle_input(self.received_at, Input::Datagrams(datagrams));
        }
        loop {
            let mut completed = Vec::new();
            while let Some(output) = self.kernel.poll_output() {
                match output {
                    Output::Disk(op) => match &mut self.executor {
                        Executor::Inline(disk) => {
                            completed.push(DiskCompletion { io: op.io(), result: disk.execute(&op) })
                        }
                        Executor::Thread(thread) => thread.submit(op),
                        Executor::None => unreachable!("a kernel without a log asked for {op:?}"),
                    },
                    Output::Reply { id, reply } => {
                        let sink = self.waiters.remove(&id).expect("the kernel answers each command once");
                        sink(reply);
                    }
                    Output::Event(event) => report(&event),
                    Output::Transmit(transmit) => {
                        self.transmit_bytes += transmit.contents.len();
                        self.transmits.push(transmit);
                    }
                    Output::Delivery(delivery) => self.deliveries.push(delivery),
                    Output::ReadFile { transfer, path, offset, len } => {
                        self.reads.push_back(FileReadRequest { transfer, path, offset, len });
                    }
                    Output::Send { to, .. } => {
                        tracing::warn!(to, "kernel without transport: raft message dropped")
                    }
                }
            }
            let read_now = self.transmit_bytes < DRAIN_TRANSMIT_BYTES_MAX;
            if completed.is_empty() && (self.reads.is_empty() || !read_now) {
                // A clock read only when something waits for the next turn.
                if !self.reads.is_empty() {
                    self.reads_held_at = Instant::now();
                }
                return;
            }
            let now = Instant::now();
            // Reads of a file being sent come from the page cache in the
            // common case; they run here, in order.
            while read_now && let Some(read) = self.reads.pop_front() {
                let result = crate::disk::read_file_piece(&read.path, read.offset, read.len);
                self.kernel.handle_input(now, Input::FileRead { transfer: read.transfer, result });
            }
            self.disk_done(now, completed);
        }
    }

    /// Stops the executor after the operations already queued and waits for
    /// it, releasing the data directory.
    pub fn close(self) {
        if let Executor::Thread(thread) = self.executor {
            thread.close();
        }
    }
}

fn report(event: &Event) {
    match event {
        Event::WalRecovered(report) => tracing::info!(?report, "wal recovered"),
        Event::WalRecoveryFailed(error) => tracing::error!(%error, "wal recovery failed"),
        Event::WalFailed(error) => tracing::error!(%error, "wal failed; reopen to recover"),
        Event::WalSyncOverdue { elapsed } => tracing::warn!(?elapsed, "wal sync is slow"),
        Event::Replica(ReplicaEvent::MessageRefused { from, reason }) => {
            tracing::warn!(peer = from, %reason, "raft message refused")
        }
        Event::Replica(event) => tracing::debug!(?event, "raft"),
        Event::NodeFailed(NodeError::ShuttingDown) => tracing::debug!("node stopped"),
        Event::NodeFailed(error) => tracing::error!(%error, "node stopped"),
        Event::CompactionFailed(error) => tracing::warn!(%error, "log compaction failed"),
        Event::Transport(TransportEvent::Connected { peer, address, inbound }) => {
            tracing::debug!(peer, %address, inbound, "connected")
        }
        Event::Transport(TransportEvent::Lost { peer, reason }) => {
            tracing::debug!(peer, %reason, "connection lost")
        }
        Event::Transport(TransportEvent::HandshakeFailed { address, reason }) => {
            tracing::debug!(%address, %reason, "handshake failed")
        }
        Event::FormationStepFailed(error) => tracing::debug!(%error, "cluster formation step failed"),
        Event::Transport(TransportEvent::Refused { address, reason }) => {
            tracing::warn!(%address, %reason, "connection refused")
        }
    }
}
