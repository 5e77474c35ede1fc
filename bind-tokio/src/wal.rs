//! The spec's `WriteAheadLog` on tokio: async methods over the log's own
//! kernel thread; any number of tasks append concurrently.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use octopii_core::wal::{RecoveryReport, WalConfig, WalEntry, WalStats};
use octopii_core::{Command, Reply};
use tokio::sync::oneshot;

use crate::error::{OctopiiError, Result};

/// A write-ahead log in a directory.
///
/// Appends from many tasks share one group commit: whatever arrives while a
/// sync is in flight leaves as the next batch, one write and one sync. Every
/// method returns once its answer is durable. Share it with an `Arc`.
///
/// The log's kernel runs on a thread of its own that also does the disk
/// work (a standalone log has nothing else to serve while a sync runs); the
/// async methods wait for its answers without blocking the runtime.
#[derive(Debug)]
pub struct WriteAheadLog {
    inner: octopii_mio::WriteAheadLog,
}

impl WriteAheadLog {
    /// Opens (recovering) or creates the log in directory `path`, with at
    /// most `batch_size` records per batch; `flush_interval` is how long a
    /// sync may take before it is logged as slow (batches never wait).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Config`] for a zero batch size or interval,
    /// [`OctopiiError::Io`] if the directory cannot be created or is in use
    /// by another open log, [`OctopiiError::Wal`] if recovery fails (for
    /// example on corruption of committed data).
    pub async fn new(path: PathBuf, batch_size: usize, flush_interval: Duration) -> Result<Self> {
        let config = WalConfig { batch_records_max: batch_size, flush_interval, ..WalConfig::default() };
        Self::with_config(path, config).await
    }

    /// Like [`WriteAheadLog::new`] with every tuning knob.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::new`].
    pub async fn with_config(path: PathBuf, config: WalConfig) -> Result<Self> {
        // Opening waits for recovery's disk work: keep it off the runtime.
        let opened = tokio::task::spawn_blocking(move || octopii_mio::WriteAheadLog::open_with(path, config))
            .await
            .map_err(|_| OctopiiError::Shutdown)?;
        Ok(Self { inner: opened? })
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        self.inner.recovery()
    }

    /// Appends `data` and returns its offset once it is durable. Offsets
    /// increase, also across reopen.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Wal`] if the entry is too large or the write or sync
    /// failed; after a failure every call fails until the log is reopened.
    pub async fn append(&self, data: Bytes) -> Result<u64> {
        let Reply::Appended(result) = self.call(Command::Append(data)).await? else { unreachable!() };
        Ok(result?)
    }

    /// Returns once everything appended before the call is durable.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::append`].
    pub async fn flush(&self) -> Result<()> {
        let Reply::Flushed(result) = self.call(Command::Flush).await? else { unreachable!() };
        Ok(result?)
    }

    /// Every durable entry's payload, oldest first.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Wal`] if a read fails or meets corruption.
    pub async fn read_all(&self) -> Result<Vec<Bytes>> {
        Ok(self.entries().await?.into_iter().map(|entry| entry.payload).collect())
    }

    /// Every durable entry with its offset, oldest first.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::read_all`].
    pub async fn entries(&self) -> Result<Vec<WalEntry>> {
        let Reply::Entries(result) = self.call(Command::ReadAll).await? else { unreachable!() };
        Ok(result?)
    }

    /// Discards every entry at offset `from` or later, durably.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::append`], or if `from` is past the end.
    pub async fn truncate_from(&self, from: u64) -> Result<()> {
        let Reply::Truncated(result) = self.call(Command::TruncateFrom(from)).await? else { unreachable!() };
        Ok(result.map(|_| ())?)
    }

    /// Removes the segment files that hold only entries below `offset`,
    /// returning how many were removed.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Wal`] if a removal failed.
    pub async fn remove_before(&self, offset: u64) -> Result<usize> {
        let Reply::Removed(result) = self.call(Command::RemoveBefore(offset)).await? else { unreachable!() };
        Ok(result?)
    }

    /// Counters since the log was opened: batches (one write and one sync
    /// each), records and bytes written.
    ///
    /// # Errors
    ///
    /// Only if the log has shut down.
    pub async fn stats(&self) -> Result<WalStats> {
        let Reply::Stats(stats) = self.call(Command::Stats).await? else { unreachable!() };
        Ok(stats)
    }

    /// Stops the log and waits until its files and directory lock are
    /// released, so the directory can be opened again at once. Dropping the
    /// log also stops it, without waiting.
    pub async fn close(self) {
        let inner = self.inner;
        let _ = tokio::task::spawn_blocking(move || inner.close()).await;
    }

    async fn call(&self, command: Command) -> Result<Reply> {
        let (reply, answer) = oneshot::channel();
        let sink = Box::new(move |answer| {
            let _ = reply.send(answer);
        });
        self.inner.submit(command, sink).map_err(OctopiiError::from)?;
        answer.await.map_err(|_| OctopiiError::Shutdown)
    }
}
