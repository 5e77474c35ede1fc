//! Executes the core's disk operations on real files, on a thread of its own.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use bytes::BytesMut;
use octopii_core::disk::{
    DiskCompletion, DiskDone, DiskFailure, DiskOp, DiskOpKind, FileName, IoError, ListedFile,
};
use octopii_core::transport::chunk::FileRead;

/// Name of the lock file that keeps two processes out of one directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// A data directory, held exclusively, whose files the core's [`DiskOp`]s act
/// on. Syncs are `fdatasync`; creations and removals also sync the
/// directory, so they survive a crash.
#[derive(Debug)]
pub struct FileDisk {
    dir: PathBuf,
    directory: File,
    _lock: File,
    files: BTreeMap<FileName, File>,
}

impl FileDisk {
    /// Opens `dir`, creating it if missing, and locks it.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or opened, or another process (or
    /// another open log in this process) holds its lock (`WouldBlock`).
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE_NAME))?;
        lock.try_lock().map_err(|error| match error {
            TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another open log", dir.display()),
            ),
            TryLockError::Error(error) => error,
        })?;
        let directory = File::open(dir)?;
        Ok(Self { dir: dir.to_owned(), directory, _lock: lock, files: BTreeMap::new() })
    }

    /// Executes one operation.
    ///
    /// # Errors
    ///
    /// What the operating system reported.
    pub fn execute(&mut self, op: &DiskOp) -> Result<DiskDone, DiskFailure> {
        match op {
            DiskOp::List { .. } => Ok(DiskDone::Listed(self.list()?)),
            DiskOp::Read { file, offset, len, .. } => {
                let len = usize::try_from(*len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
                let mut buffer = BytesMut::zeroed(len);
                self.file(file)?.read_exact_at(&mut buffer, *offset)?;
                Ok(DiskDone::Read(buffer.freeze()))
            }
            DiskOp::Create { file, .. } => {
                let handle =
                    OpenOptions::new().read(true).write(true).create_new(true).open(self.path(file))?;
                self.files.insert(file.clone(), handle);
                self.directory.sync_all()?;
                Ok(DiskDone::Done)
            }
            DiskOp::Write { file, offset, data, .. } => {
                self.file(file)?.write_all_at(data, *offset)?;
                Ok(DiskDone::Done)
            }
            DiskOp::Sync { file, .. } => {
                self.file(file)?.sync_data()?;
                Ok(DiskDone::Done)
            }
            DiskOp::SyncDirectory { .. } => {
                self.directory.sync_all()?;
                Ok(DiskDone::Done)
            }
            DiskOp::Truncate { file, len, .. } => {
                let handle = self.file(file)?;
                handle.set_len(*len)?;
                handle.sync_all()?;
                Ok(DiskDone::Done)
            }
            DiskOp::Remove { file, .. } => {
                self.files.remove(file);
                match fs::remove_file(self.path(file)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error.into()),
                    _ => {}
                }
                self.directory.sync_all()?;
                Ok(DiskDone::Done)
            }
        }
    }

    fn path(&self, file: &FileName) -> PathBuf {
        self.dir.join(file.as_str())
    }

    fn file(&mut self, file: &FileName) -> io::Result<&File> {
        if !self.files.contains_key(file) {
            let handle = OpenOptions::new().read(true).write(true).open(self.path(file))?;
            self.files.insert(file.clone(), handle);
        }
        Ok(&self.files[file])
    }

    fn list(&self) -> io::Result<Vec<ListedFile>> {
        let mut listing = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            let name = entry.file_name();
            let name = name.to_str().and_then(FileName::new);
            if let (true, Some(name)) = (metadata.is_file(), name) {
                listing.push(ListedFile { name, len: metadata.len() });
            }
        }
        listing.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(listing)
    }
}

/// A thread executing disk operations in the order they are sent.
#[derive(Debug)]
pub struct DiskThread {
    ops: Option<mpsc::Sender<DiskOp>>,
    thread: Option<JoinHandle<()>>,
}

impl DiskThread {
    /// Starts the thread. Completions go to `deliver`, in order, a burst at a
    /// time: the thread executes every operation already queued (a batch's
    /// write and its sync, say) before delivering, so the loop is woken once
    /// per burst rather than once per operation. The thread stops when
    /// `deliver` returns `false` or the `DiskThread` is dropped.
    ///
    /// # Errors
    ///
    /// The thread cannot be spawned.
    pub fn spawn(
        mut disk: FileDisk,
        mut deliver: impl FnMut(Vec<DiskCompletion>) -> bool + Send + 'static,
    ) -> io::Result<Self> {
        let (ops, receiver) = mpsc::channel::<DiskOp>();
        let thread = thread::Builder::new().name("octopii-disk".into()).spawn(move || {
            let mut execute = |op: DiskOp| DiskCompletion { io: op.io(), result: disk.execute(&op) };
            while let Ok(op) = receiver.recv() {
                let mut burst = vec![execute(op)];
                burst.extend(receiver.try_iter().map(&mut execute));
                if !deliver(burst) {
                    break;
                }
            }
        })?;
        Ok(Self { ops: Some(ops), thread: Some(thread) })
    }

    /// Queues an operation.
    pub fn submit(&self, op: DiskOp) {
        // The thread only stops early when its completions have nowhere to
        // go, and then nobody waits for this one either.
        let _ = self.ops.as_ref().expect("present until drop").send(op);
    }

    /// Stops the thread after the operations already queued, and waits for
    /// it, so the directory's lock and files are released on return.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.ops = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DiskThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads up to `len` bytes of `path` at `offset`, for a transfer's
/// [`Output::ReadFile`](octopii_core::Output::ReadFile).
///
/// # Errors
///
/// The file cannot be opened or read.
pub fn read_file_piece(path: &Path, offset: u64, len: usize) -> Result<FileRead, IoError> {
    let fail = |error: io::Error| IoError {
        op: DiskOpKind::Read,
        file: path.display().to_string(),
        failure: error.into(),
    };
    let mut file = File::open(path).map_err(fail)?;
    let file_len = file.metadata().map_err(fail)?.len();
    let available = usize::try_from(file_len.saturating_sub(offset)).unwrap_or(usize::MAX);
    let want = len.min(available);
    // Read into spare capacity: the buffer is not zeroed first, as
    // `read_exact_at` would need. `take` stops at `want`, so the exact
    // capacity is never outgrown.
    let mut data = Vec::with_capacity(want);
    file.seek(SeekFrom::Start(offset)).map_err(fail)?;
    (&mut file).take(want as u64).read_to_end(&mut data).map_err(fail)?;
    if data.len() != want {
        return Err(fail(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(FileRead { data: data.into(), file_len })
}
