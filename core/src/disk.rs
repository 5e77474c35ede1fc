//! Disk effects: what the core asks a binding to do with files, and how the
//! binding reports back.
//!
//! Every operation names a file inside the node's data directory (never a
//! path) and, where it matters, an offset. A binding executes operations one
//! at a time, in the order it polled them, and reports each one back as a
//! [`DiskCompletion`] carrying the same [`IoId`] and the outcome, including
//! the error when there was one.

use std::fmt;

use bytes::Bytes;

/// Identifies one disk operation; its completion carries the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoId(pub u64);

/// Longest file name the core ever asks for, in bytes.
pub const FILE_NAME_BYTES_MAX: usize = 64;

/// A plain file name inside the node's data directory.
///
/// It never contains a path separator, so a binding can join it to its
/// directory without checking where it points.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileName(String);

impl FileName {
    /// Accepts a name made of ASCII letters, digits, `.`, `-` and `_`, not
    /// starting with `.`, at most [`FILE_NAME_BYTES_MAX`] bytes; `None`
    /// otherwise (so names read from a directory listing are filtered too).
    pub fn new(name: &str) -> Option<Self> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        let valid = !name.is_empty()
            && name.len() <= FILE_NAME_BYTES_MAX
            && !name.starts_with('.')
            && name.chars().all(allowed);
        valid.then(|| Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A disk operation for a binding to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// List the regular files of the data directory with their lengths.
    /// Completes with [`DiskDone::Listed`]. Creates the directory if it is
    /// missing.
    List {
        /// Correlates the completion.
        io: IoId,
    },
    /// Read `len` bytes at `offset`. Completes with [`DiskDone::Read`]; a
    /// short read (the file is shorter) is an error of kind `UnexpectedEof`.
    Read {
        /// Correlates the completion.
        io: IoId,
        /// File to read.
        file: FileName,
        /// Byte offset of the first byte.
        offset: u64,
        /// Number of bytes.
        len: u64,
    },
    /// Create a new, empty file (failing if it exists) and make its
    /// directory entry durable (sync the directory).
    Create {
        /// Correlates the completion.
        io: IoId,
        /// File to create.
        file: FileName,
    },
    /// Write `data` at `offset`. Not durable until a later [`DiskOp::Sync`].
    Write {
        /// Correlates the completion.
        io: IoId,
        /// File to write.
        file: FileName,
        /// Byte offset of the first byte.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Make every completed write to `file` durable (`fdatasync`).
    Sync {
        /// Correlates the completion.
        io: IoId,
        /// File to sync.
        file: FileName,
    },
    /// Make the directory's entries durable (`fsync` on the directory), so
    /// that files created by an earlier process survive a power loss.
    SyncDirectory {
        /// Correlates the completion.
        io: IoId,
    },
    /// Cut `file` to `len` bytes and make that durable.
    Truncate {
        /// Correlates the completion.
        io: IoId,
        /// File to cut.
        file: FileName,
        /// New length.
        len: u64,
    },
    /// Remove `file` and make the removal durable (sync the directory). A
    /// file that is already gone counts as removed.
    Remove {
        /// Correlates the completion.
        io: IoId,
        /// File to remove.
        file: FileName,
    },
}

impl DiskOp {
    /// The id its completion will carry.
    pub fn io(&self) -> IoId {
        match self {
            DiskOp::List { io }
            | DiskOp::SyncDirectory { io }
            | DiskOp::Read { io, .. }
            | DiskOp::Create { io, .. }
            | DiskOp::Write { io, .. }
            | DiskOp::Sync { io, .. }
            | DiskOp::Truncate { io, .. }
            | DiskOp::Remove { io, .. } => *io,
        }
    }

    /// What kind of operation this is, for error reports.
    pub fn kind(&self) -> DiskOpKind {
        match self {
            DiskOp::List { .. } => DiskOpKind::List,
            DiskOp::Read { .. } => DiskOpKind::Read,
            DiskOp::Create { .. } => DiskOpKind::Create,
            DiskOp::Write { .. } => DiskOpKind::Write,
            DiskOp::Sync { .. } => DiskOpKind::Sync,
            DiskOp::SyncDirectory { .. } => DiskOpKind::SyncDirectory,
            DiskOp::Truncate { .. } => DiskOpKind::Truncate,
            DiskOp::Remove { .. } => DiskOpKind::Remove,
        }
    }

    /// The file it acts on, if any.
    pub fn file(&self) -> Option<&FileName> {
        match self {
            DiskOp::List { .. } | DiskOp::SyncDirectory { .. } => None,
            DiskOp::Read { file, .. }
            | DiskOp::Create { file, .. }
            | DiskOp::Write { file, .. }
            | DiskOp::Sync { file, .. }
            | DiskOp::Truncate { file, .. }
            | DiskOp::Remove { file, .. } => Some(file),
        }
    }
}

/// The kinds of [`DiskOp`], named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOpKind {
    /// [`DiskOp::List`].
    List,
    /// [`DiskOp::Read`].
    Read,
    /// [`DiskOp::Create`].
    Create,
    /// [`DiskOp::Write`].
    Write,
    /// [`DiskOp::Sync`].
    Sync,
    /// [`DiskOp::SyncDirectory`].
    SyncDirectory,
    /// [`DiskOp::Truncate`].
    Truncate,
    /// [`DiskOp::Remove`].
    Remove,
}

impl fmt::Display for DiskOpKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DiskOpKind::List => "list",
            DiskOpKind::Read => "read",
            DiskOpKind::Create => "create",
            DiskOpKind::Write => "write",
            DiskOpKind::Sync => "sync",
            DiskOpKind::SyncDirectory => "directory sync",
            DiskOpKind::Truncate => "truncate",
            DiskOpKind::Remove => "remove",
        };
        formatter.write_str(name)
    }
}

/// A file in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFile {
    /// Its name. Entries whose names [`FileName::new`] refuses are left out
    /// by the binding.
    pub name: FileName,
    /// Its length in bytes.
    pub len: u64,
}

/// The successful result of a [`DiskOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskDone {
    /// Result of [`DiskOp::List`].
    Listed(Vec<ListedFile>),
    /// Result of [`DiskOp::Read`]: exactly the requested bytes.
    Read(Bytes),
    /// Result of every other operation.
    Done,
}

/// Why a disk operation failed, as the binding saw it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({kind:?})")]
pub struct DiskFailure {
    /// The operating system's classification.
    pub kind: std::io::ErrorKind,
    /// The operating system's message.
    pub message: String,
}

impl From<std::io::Error> for DiskFailure {
    fn from(error: std::io::Error) -> Self {
        Self { kind: error.kind(), message: error.to_string() }
    }
}

/// A binding's report that a [`DiskOp`] finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCompletion {
    /// The operation's id.
    pub io: IoId,
    /// What happened.
    pub result: Result<DiskDone, DiskFailure>,
}

/// A failed disk operation, as the core reports it to its callers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} of {file} failed: {failure}")]
pub struct IoError {
    /// Which operation failed.
    pub op: DiskOpKind,
    /// The file it acted on (the data directory for a listing).
    pub file: String,
    /// What the binding reported.
    pub failure: DiskFailure,
}
