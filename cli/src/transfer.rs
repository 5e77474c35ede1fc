//! `octopii send` and `octopii receive`: files as Shipping Lane transfers
//! verified by SHA-256, with their progress on stderr.
//!
//! Progress comes from QUIC's counters of the link (`LinkStats`), read
//! every [`PROGRESS_INTERVAL`] while the transfer runs: they count UDP
//! payload, so they run slightly ahead of the body, and the sender caps
//! them at the file's size. On a terminal the progress line is redrawn in
//! place; otherwise each reading is a line of its own.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use octopii::chunk::ChunkSource;
use octopii::transport::{PeerConnection, QuicTransport};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::client::{IdentityArgs, close_transport, open_transport, wildcard_like};
use crate::shutdown_signal;

/// How often the progress line is updated.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Link bytes a receiver may take in one progress interval without a
/// transfer counting as under way: keep-alives and acknowledgements stay
/// far below it, a transfer's pieces (64 KiB each) far above.
const IDLE_BYTES_PER_INTERVAL_MAX: u64 = 4096;
/// Verified bodies waiting to be written to disk; the peers' tasks wait
/// beyond it (bodies are in memory until written).
const BODIES_WAITING_MAX: usize = 1;
/// How long a receiver that has what it came for waits for its senders to
/// hang up before closing: closing at once could cut off the verdict a
/// sender is still waiting for.
const LINGER_MAX: Duration = Duration::from_secs(2);
/// How often a lingering receiver checks whether its senders hung up.
const LINGER_POLL: Duration = Duration::from_millis(20);
const MIB: f64 = 1024.0 * 1024.0;

/// Sends `file` to the node at each address of `to`, one transfer each at
/// once (read by each at its receiver's pace, hashed once), showing their
/// progress together on stderr; prints one line per receiver to stdout
/// once it has verified the file.
///
/// # Errors
///
/// The file cannot be read or is not a regular file, the identity or the
/// endpoint cannot be made, nobody of the cluster answers at one of `to`
/// (then nothing is sent), a transfer fails (checksum mismatch, refused,
/// connection lost; the others still finish), or the command is
/// interrupted (Ctrl-C, SIGTERM).
pub async fn send(file: &Path, to: &[SocketAddr], identity: &IdentityArgs) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(file).with_context(|| format!("cannot send {}", file.display()))?;
    if !metadata.is_file() {
        bail!("cannot send {}: not a regular file", file.display());
    }
    let Some(&first) = to.first() else { bail!("cannot send {}: no receiver given", file.display()) };
    let (transport, identity_dir) = open_transport(identity, wildcard_like(first)).await?;
    let result = send_over(&transport, file, metadata.len(), to).await;
    close_transport(&transport, identity_dir).await;
    result
}

async fn send_over(
    transport: &Arc<QuicTransport>,
    file: &Path,
    size: u64,
    to: &[SocketAddr],
) -> anyhow::Result<()> {
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    // Every receiver is reached before anything is sent.
    let mut dials = JoinSet::new();
    for &address in to {
        let transport = transport.clone();
        dials.spawn(async move { (address, transport.connect(address).await) });
    }
    let mut peers = Vec::new();
    while let Some(dialed) = tokio::select! {
        dialed = dials.join_next() => dialed,
        () = &mut stop => bail!("interrupted while connecting to {}", list(to)),
    } {
        let (address, peer) = dialed.context("a dial task failed")?;
        let peer =
            peer.with_context(|| format!("cannot send {}: connecting to {address}", file.display()))?;
        peers.push(peer);
    }
    let total = size * to.len() as u64;
    let mut progress = Progress::new();
    // The links may have carried other traffic (the handshake): count
    // from here. A new connection starts its counters again: never show
    // less than before.
    let mut link_start = Vec::new();
    for peer in &peers {
        link_start.push(peer.stats().await.map_or(0, |stats| stats.sent_bytes));
    }
    let mut shown = vec![0; peers.len()];
    let started = Instant::now();
    progress.show(&sent_line(0, total, Duration::ZERO));
    let source = ChunkSource::File(file.to_path_buf());
    let sending = transport.transfer_chunk_to_peers(&source, to);
    tokio::pin!(sending);
    let mut ticks = progress_ticks(started);
    let results = loop {
        tokio::select! {
            results = &mut sending => break results,
            _ = ticks.tick() => {
                for (index, peer) in peers.iter().enumerate() {
                    if let Some(stats) = peer.stats().await {
                        let sent = stats.sent_bytes.saturating_sub(link_start[index]).min(size);
                        shown[index] = shown[index].max(sent);
                    }
                }
                progress.show(&sent_line(shown.iter().sum(), total, started.elapsed()));
            }
            () = &mut stop => {
                progress.finish();
                bail!("interrupted while sending {} to {}", file.display(), list(to));
            }
        }
    };
    let elapsed = started.elapsed();
    let delivered: u64 =
        results.iter().filter(|result| result.success).map(|result| result.bytes_transferred).sum();
    progress.show(&sent_line(delivered, total, elapsed));
    progress.finish();
    let mut failed = Vec::new();
    for result in results {
        if result.success {
            let bytes = result.bytes_transferred;
            println!(
                "delivered {} to {}: {bytes} bytes ({:.1} MiB) in {:.2} s, {:.1} MiB/s, verified by SHA-256",
                file.display(),
                result.peer,
                mib(bytes),
                result.duration.as_secs_f64(),
                mib_per_second(bytes, result.duration),
            );
        } else {
            let reason = result.error.unwrap_or_else(|| "unknown".into());
            failed.push(format!("to {}: {reason}", result.peer));
        }
    }
    if !failed.is_empty() {
        bail!("sending {} failed {}", file.display(), failed.join("; "));
    }
    Ok(())
}

/// Addresses as a comma-separated list.
fn list(addresses: &[SocketAddr]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A body verified by the receiver, waiting to be written.
struct Received {
    body: Bytes,
    peer: Arc<PeerConnection>,
}

/// Receives transfers on `listen` and writes each verified body to
/// `out/transfer-<k>.bin`, until `count` are written or the command is
/// interrupted.
///
/// # Errors
///
/// `out` cannot be made, the identity or the endpoint cannot be made, a
/// body cannot be written (a file of that name exists already, the disk is
/// full), or the command is interrupted before `count` transfers. A
/// transfer that fails is reported on stderr and does not count.
pub async fn receive(
    listen: SocketAddr,
    out: &Path,
    count: Option<u64>,
    identity: &IdentityArgs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (transport, identity_dir) = open_transport(identity, listen).await?;
    let result = receive_on(&transport, out, count).await;
    close_transport(&transport, identity_dir).await;
    result
}

async fn receive_on(transport: &Arc<QuicTransport>, out: &Path, count: Option<u64>) -> anyhow::Result<()> {
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", transport.local_addr())?;
        stdout.flush()?;
    }
    let (bodies_sender, mut bodies) = mpsc::channel::<Received>(BODIES_WAITING_MAX);
    // One task per peer id; a peer that connects again is the same peer,
    // and its task is told to watch the new connection.
    let mut reconnected: BTreeMap<u64, Arc<Notify>> = BTreeMap::new();
    let mut peer_tasks = JoinSet::new();
    let mut senders: Vec<Arc<PeerConnection>> = Vec::new();
    let mut written = 0;
    while count.is_none_or(|count| written < count) {
        tokio::select! {
            accepted = transport.accept() => {
                let (_, peer) = accepted.context("accepting peers")?;
                match reconnected.get(&peer.peer_id()) {
                    Some(notify) => notify.notify_one(),
                    None => {
                        let notify = Arc::new(Notify::new());
                        reconnected.insert(peer.peer_id(), notify.clone());
                        peer_tasks.spawn(receive_from(peer, notify, bodies_sender.clone()));
                    }
                }
            }
            Some(received) = bodies.recv() => {
                written += 1;
                let path = body_path(out, written);
                let size = received.body.len();
                let (directory, target) = (out.to_path_buf(), path.clone());
                tokio::task::spawn_blocking(move || write_whole(&directory, &target, &received.body))
                    .await
                    .expect("writing a file does not panic")
                    .with_context(|| format!("writing {}", path.display()))?;
                println!(
                    "wrote {}: {size} bytes ({:.1} MiB) from {}, verified by SHA-256",
                    path.display(),
                    mib(size as u64),
                    received.peer.remote_address(),
                );
                if !senders.iter().any(|sender| sender.peer_id() == received.peer.peer_id()) {
                    senders.push(received.peer);
                }
            }
            () = &mut stop => {
                if let Some(count) = count {
                    bail!("interrupted after {written} of {count} transfers");
                }
                eprintln!("stopping after {written} transfer(s)");
                return Ok(());
            }
        }
    }
    peer_tasks.shutdown().await;
    linger(&senders).await;
    Ok(())
}

/// Receives what `peer` sends and hands each verified body on, showing
/// progress meanwhile; ends when the transport closes or nobody takes the
/// bodies any more.
async fn receive_from(peer: Arc<PeerConnection>, reconnected: Arc<Notify>, bodies: mpsc::Sender<Received>) {
    let from = peer.remote_address();
    let mut progress = Progress::new();
    let mut meter = ReceiveMeter::new(peer.stats().await.map_or(0, |stats| stats.received_bytes));
    let mut ticks = progress_ticks(Instant::now());
    // No connection, no figures: ticks stop until the peer is back.
    let mut connected = true;
    loop {
        tokio::select! {
            received = peer.recv_chunk_verified() => {
                let link_bytes = peer.stats().await.map_or(0, |stats| stats.received_bytes);
                let elapsed = meter.restart(link_bytes);
                match received {
                    Ok(Some(body)) => {
                        let size = body.len() as u64;
                        progress.show(&received_line(from, size, elapsed));
                        progress.finish();
                        let received = Received { body, peer: peer.clone() };
                        if bodies.send(received).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => {
                        progress.finish();
                        eprintln!("a transfer from {from} failed: {error}");
                    }
                }
            }
            _ = ticks.tick(), if connected => match peer.stats().await {
                Some(stats) => {
                    if let Some((bytes, elapsed)) = meter.tick(stats.received_bytes) {
                        progress.show(&received_line(from, bytes, elapsed));
                    }
                }
                None => connected = false,
            },
            () = reconnected.notified(), if !connected => {
                connected = true;
                meter.restart(0);
            }
        }
    }
}

/// Tells a transfer under way from an idle link on a receiver, which
/// learns a body's size only at its end.
struct ReceiveMeter {
    /// The link's received bytes at the last tick.
    last: u64,
    /// Where the transfer under way started, if one is.
    transfer_start: Option<u64>,
    /// When the transfer under way started (or the last idle tick).
    started: Instant,
}

impl ReceiveMeter {
    fn new(link_bytes: u64) -> Self {
        Self { last: link_bytes, transfer_start: None, started: Instant::now() }
    }

    /// Takes a reading of the link's counter: the transfer's bytes so far
    /// and its duration, once one is under way.
    fn tick(&mut self, link_bytes: u64) -> Option<(u64, Duration)> {
        // A lower counter is a new connection counting from zero.
        let since_last = link_bytes.checked_sub(self.last).unwrap_or(link_bytes);
        if self.transfer_start.is_none() {
            if since_last <= IDLE_BYTES_PER_INTERVAL_MAX {
                self.last = link_bytes;
                self.started = Instant::now();
                return None;
            }
            // The transfer began after the last idle tick (or with a new
            // connection).
            self.transfer_start = Some(if link_bytes < self.last { 0 } else { self.last });
        }
        self.last = link_bytes;
        let start = self.transfer_start.expect("set above when none");
        Some((link_bytes.saturating_sub(start), self.started.elapsed()))
    }

    /// Ends the transfer under way (the link now at `link_bytes`); how long
    /// it ran.
    fn restart(&mut self, link_bytes: u64) -> Duration {
        let elapsed = self.started.elapsed();
        *self = Self::new(link_bytes);
        elapsed
    }
}

/// Waits until every peer in `senders` has hung up, at most [`LINGER_MAX`].
async fn linger(senders: &[Arc<PeerConnection>]) {
    let deadline = Instant::now() + LINGER_MAX;
    for sender in senders {
        while !sender.is_closed().await && Instant::now() < deadline {
            tokio::time::sleep(LINGER_POLL).await;
        }
    }
}

/// Writes `body` to `path` through a temporary file in `directory`, so
/// that a partial body never carries the final name; an existing file of
/// that name is kept and the write fails.
fn write_whole(directory: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut file = tempfile::Builder::new().prefix(".transfer-").suffix(".partial").tempfile_in(directory)?;
    file.write_all(body)?;
    file.as_file().sync_all()?;
    file.persist_noclobber(path).map_err(|error| error.error)?;
    // The rename is durable once the directory is.
    std::fs::File::open(directory)?.sync_all()
}

/// A progress line on stderr: redrawn in place on a terminal, a line per
/// reading otherwise.
struct Progress {
    terminal: bool,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Self { terminal: std::io::stderr().is_terminal(), drawn: false }
    }

    fn show(&mut self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        // A closed stderr costs the display, not the transfer.
        let _ = if self.terminal { write!(stderr, "\r{line}\x1b[K") } else { writeln!(stderr, "{line}") };
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Ends the line being redrawn, so that what follows starts afresh.
    fn finish(&mut self) {
        if self.terminal && self.drawn {
            let _ = writeln!(std::io::stderr());
        }
        self.drawn = false;
    }
}

fn progress_ticks(start: Instant) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at((start + PROGRESS_INTERVAL).into(), PROGRESS_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

fn sent_line(sent: u64, size: u64, elapsed: Duration) -> String {
    // An empty file is whole from the start.
    let percent = (sent * 100).checked_div(size).unwrap_or(100);
    format!(
        "sent {:.1} of {:.1} MiB ({percent}%), {:.1} MiB/s",
        mib(sent),
        mib(size),
        mib_per_second(sent, elapsed)
    )
}

fn received_line(from: SocketAddr, bytes: u64, elapsed: Duration) -> String {
    format!("received {:.1} MiB from {from}, {:.1} MiB/s", mib(bytes), mib_per_second(bytes, elapsed))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() { 0.0 } else { mib(bytes) / elapsed.as_secs_f64() }
}

/// The path of the `k`th body written to `out` (counting from 1).
fn body_path(out: &Path, k: u64) -> PathBuf {
    out.join(format!("transfer-{k}.bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_link_shows_nothing_and_a_transfer_counts_from_its_start() {
        let mut meter = ReceiveMeter::new(1000);
        assert_eq!(meter.tick(1100), None, "keep-alives");
        assert_eq!(meter.tick(1200), None);
        let (bytes, _) = meter.tick(1200 + 300_000).expect("a transfer under way");
        assert_eq!(bytes, 300_000);
        let (bytes, _) = meter.tick(1200 + 300_050).expect("still under way, however slow");
        assert_eq!(bytes, 300_050);
        meter.restart(400_000);
        assert_eq!(meter.tick(400_100), None, "idle again after the body");
        let (bytes, _) = meter.tick(50_000).expect("a new connection counts from zero");
        assert_eq!(bytes, 50_000);
    }

    #[test]
    fn a_body_never_appears_half_written_nor_replaces_a_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = body_path(directory.path(), 1);
        write_whole(directory.path(), &path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let error = write_whole(directory.path(), &path, b"second").unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> =
            std::fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names, ["transfer-1.bin"], "no temporary file left behind");
    }

    #[test]
    fn progress_lines_cap_and_count() {
        assert_eq!(sent_line(0, 0, Duration::ZERO), "sent 0.0 of 0.0 MiB (100%), 0.0 MiB/s");
        assert_eq!(
            sent_line(1 << 20, 4 << 20, Duration::from_secs(1)),
            "sent 1.0 of 4.0 MiB (25%), 1.0 MiB/s"
        );
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            received_line(from, 3 << 20, Duration::from_secs(2)),
            "received 3.0 MiB from 127.0.0.1:9, 1.5 MiB/s"
        );
    }
}
