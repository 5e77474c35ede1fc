//! The spec's `WriteAheadLog`, blocking: callers on any threads, one loop
//! thread owning the kernel, one disk thread.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Poll, Token, Waker};
use octopii_core::wal::{RecoveryReport, WalConfig, WalConfigError, WalEntry, WalError, WalStats};
use octopii_core::{Command, Kernel, KernelConfig, Reply};

use crate::disk::FileDisk;
use crate::driver::{Driver, Executor, ReplySink};

const WAKE: Token = Token(0);

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory could not be opened, locked, or the loop thread
    /// could not start.
    #[error("wal directory: {0}")]
    Io(#[from] io::Error),
    /// The configuration is invalid.
    #[error("invalid wal config: {0}")]
    Config(#[from] WalConfigError),
    /// The log refused or failed the operation.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The log's loop has stopped.
    #[error("the wal's loop has stopped")]
    Closed,
}

struct Request {
    command: Command,
    reply: ReplySink,
}

/// A write-ahead log in a directory, usable from many threads at once.
/// Concurrent appends share one group commit: one write and one sync per
/// batch. Every method blocks until its answer is durable or known.
#[derive(Debug)]
pub struct WriteAheadLog {
    requests: Option<mpsc::Sender<Request>>,
    waker: Arc<Waker>,
    /// Set when the loop has been woken and has not yet taken the commands
    /// waiting: later callers need not wake it again (a system call each).
    woken: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
}

impl WriteAheadLog {
    /// Opens (recovering) or creates the log in `path`, with at most
    /// `batch_size` records per batch; `flush_interval` is how long a sync
    /// may take before it is reported as slow.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero batch size or interval; [`Error::Io`]
    /// if the directory cannot be used; [`Error::Wal`] if recovery fails,
    /// for example on corruption of committed data.
    pub fn open(path: impl AsRef<Path>, batch_size: usize, flush_interval: Duration) -> Result<Self, Error> {
        let config = WalConfig { batch_records_max: batch_size, flush_interval, ..WalConfig::default() };
        Self::open_with(path, config)
    }

    /// Like [`WriteAheadLog::open`] with every tuning knob.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::open`].
    pub fn open_with(path: impl AsRef<Path>, config: WalConfig) -> Result<Self, Error> {
        let kernel = Kernel::new(KernelConfig { wal: config })?;
        let disk = FileDisk::open(path.as_ref())?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (requests, request_queue) = mpsc::channel();
        // A standalone log has nothing else to serve while a sync runs, so
        // its loop executes disk operations itself.
        let driver = Driver::new(kernel, Executor::Inline(disk));
        let woken = Arc::new(AtomicBool::new(false));
        let loop_woken = Arc::clone(&woken);
        let thread = thread::Builder::new()
            .name("octopii-wal".into())
            .spawn(move || run(poll, driver, &request_queue, &loop_woken))?;
        let mut wal = Self {
            requests: Some(requests),
            waker,
            woken,
            thread: Some(thread),
            recovery: RecoveryReport::default(),
        };
        let Reply::Opened(report) = wal.call(Command::Open)? else {
            unreachable!("open answers with Opened")
        };
        wal.recovery = report?;
        Ok(wal)
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Appends `data`, returning its offset (sequence number) once durable.
    /// Offsets increase across reopen.
    ///
    /// # Errors
    ///
    /// [`Error::Wal`] if the entry is too large or the write or sync failed;
    /// after a failure every call fails until the log is reopened.
    pub fn append(&self, data: Bytes) -> Result<u64, Error> {
        let Reply::Appended(result) = self.call(Command::Append(data))? else { unreachable!() };
        Ok(result?)
    }

    /// Returns once everything appended before the call is durable.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::append`].
    pub fn flush(&self) -> Result<(), Error> {
        let Reply::Flushed(result) = self.call(Command::Flush)? else { unreachable!() };
        Ok(result?)
    }

    /// Every durable entry's payload, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Wal`] if a read fails or meets corruption.
    pub fn read_all(&self) -> Result<Vec<Bytes>, Error> {
        Ok(self.entries()?.into_iter().map(|entry| entry.payload).collect())
    }

    /// Every durable entry with its offset, oldest first.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::read_all`].
    pub fn entries(&self) -> Result<Vec<WalEntry>, Error> {
        let Reply::Entries(result) = self.call(Command::ReadAll)? else { unreachable!() };
        Ok(result?)
    }

    /// Discards every entry at offset `from` or later, durably.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::append`], or if `from` is past the end.
    pub fn truncate_from(&self, from: u64) -> Result<(), Error> {
        let Reply::Truncated(result) = self.call(Command::TruncateFrom(from))? else { unreachable!() };
        result.map(|_| ()).map_err(Error::from)
    }

    /// Removes the segment files that hold only entries below `offset`,
    /// returning how many were removed.
    ///
    /// # Errors
    ///
    /// [`Error::Wal`] if a removal failed.
    pub fn remove_before(&self, offset: u64) -> Result<usize, Error> {
        let Reply::Removed(result) = self.call(Command::RemoveBefore(offset))? else { unreachable!() };
        Ok(result?)
    }

    /// Counters since the log was opened: batches (one write and one sync
    /// each), records and bytes written.
    ///
    /// # Errors
    ///
    /// Only if the log has shut down.
    pub fn stats(&self) -> Result<WalStats, Error> {
        let Reply::Stats(stats) = self.call(Command::Stats)? else { unreachable!() };
        Ok(stats)
    }

    /// Stops the loop and the disk thread and waits for them, releasing the
    /// directory so it can be opened again at once.
    pub fn close(mut self) {
        self.stop();
    }

    /// Hands `command` to the loop without waiting; `reply` receives the
    /// answer on the loop's thread (it must not block). The blocking methods
    /// and the tokio binding's log are built on this.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the loop has stopped.
    pub fn submit(&self, command: Command, reply: ReplySink) -> Result<(), Error> {
        let requests = self.requests.as_ref().ok_or(Error::Closed)?;
        requests.send(Request { command, reply }).map_err(|_| Error::Closed)?;
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake()?;
        }
        Ok(())
    }

    fn call(&self, command: Command) -> Result<Reply, Error> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(
            command,
            Box::new(move |answer| {
                let _ = reply.send(answer);
            }),
        )?;
        answer.recv().map_err(|_| Error::Closed)
    }

    fn stop(&mut self) {
        self.requests = None;
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WriteAheadLog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut poll: Poll, mut driver: Driver, requests: &mpsc::Receiver<Request>, woken: &AtomicBool) {
    let mut events = Events::with_capacity(4);
    loop {
        let timeout =
            driver.next_timeout().map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if let Err(error) = poll.poll(&mut events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(%error, "wal loop cannot poll; stopping");
            break;
        }
        let now = Instant::now();
        // Cleared before the queue is read: a command sent after this point
        // either is read below or wakes the loop again.
        woken.store(false, Ordering::Release);
        // Every command waiting now goes in before the kernel is drained, so
        // that appends which arrived during the last sync leave as one batch.
        loop {
            match requests.try_recv() {
                Ok(Request { command, reply }) => driver.command(now, command, reply),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    driver.drain();
                    driver.close();
                    return;
                }
            }
        }
        driver.timeout(now);
        driver.drain();
    }
    driver.close();
}
