//! `SimDisk`: an in-memory data directory that executes the core's
//! [`DiskOp`]s and fails the way real disks fail, driven by the run's seeded
//! random generator.
//!
//! Every file has two images. The *visible* bytes are what a reader sees
//! (the page cache); the *durable* bytes are what survives a power loss.
//! Between them sits the list of writes not yet synced, in the order they
//! were made, so that the visible image is always the durable image with
//! those writes applied on top:
//!
//! - `Write` changes the visible image and records an unsynced write;
//! - `Sync` applies every unsynced write of the file to the durable image;
//! - `Create`, `Truncate` and `Remove` are durable at once (the bindings sync
//!   the file or the directory before reporting them done), and a
//!   `Truncate` makes the whole file durable, as `set_len` + `fsync` does;
//! - [`SimDisk::crash`] keeps, per file, the durable image plus an in-order
//!   prefix of the unsynced writes, the first write left out possibly torn
//!   (a random prefix of its bytes reaches the medium);
//! - [`SimDisk::flip_bit`] and [`SimDisk::rot_random`] damage stored bytes.
//!
//! Injected failures are errors of kind `Other` whose message says
//! "injected". Bad requests (a missing file, an offset past the size limit)
//! are errors too, never panics.

use std::collections::BTreeMap;
use std::io::ErrorKind;

use bytes::Bytes;
use octopii_core::disk::{DiskDone, DiskFailure, DiskOp, FileName, ListedFile};
use rand::Rng;

/// The word every injected failure's message contains, so that a caller can
/// tell an injected fault from a request the disk could not honour.
pub const INJECTED: &str = "injected";

/// Largest file the simulated disk holds, in bytes; writes and truncations
/// past it fail with `FileTooLarge`.
pub const FILE_BYTES_MAX: u64 = 1 << 30;

/// Probabilities of the disk's faults, each in `0.0..=1.0`. `Default` is no
/// fault at all.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiskFaults {
    /// A `Write` fails; none or a prefix of its bytes reaches the file.
    pub write_error: f64,
    /// A `Sync` fails; the durable image stays as it was and the unsynced
    /// writes stay unsynced.
    pub sync_error: f64,
    /// At a crash, the first unsynced write that is not kept whole is torn:
    /// a random prefix of it reaches the medium.
    pub torn_write: f64,
}

impl DiskFaults {
    /// No faults.
    pub const NONE: Self = Self { write_error: 0.0, sync_error: 0.0, torn_write: 0.0 };

    /// Checks that every probability is in `0.0..=1.0`.
    ///
    /// # Errors
    ///
    /// [`SimDiskError::Probability`] naming the first bad field.
    pub fn validate(&self) -> Result<(), SimDiskError> {
        let fields = [("write_error", self.write_error), ("sync_error", self.sync_error)];
        for (name, value) in fields.into_iter().chain([("torn_write", self.torn_write)]) {
            if !(0.0..=1.0).contains(&value) {
                return Err(SimDiskError::Probability { name, value });
            }
        }
        Ok(())
    }
}

/// What the disk did to the data it was given, counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaultCounts {
    /// Writes that failed (injected).
    pub write_errors: u64,
    /// Syncs that failed (injected).
    pub sync_errors: u64,
    /// Crashes (power losses) the disk went through.
    pub crashes: u64,
    /// Unsynced writes that did not reach the medium whole at a crash,
    /// torn ones included.
    pub unsynced_writes_lost: u64,
    /// Unsynced writes of which only a non-empty prefix reached the medium.
    pub torn_writes: u64,
    /// Bits flipped in stored data.
    pub bit_flips: u64,
}

/// A misuse of the simulated disk's own API (not a simulated I/O error).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimDiskError {
    /// No such file.
    #[error("no file named {0}")]
    NoSuchFile(FileName),
    /// The byte to damage lies outside the file's durable bytes.
    #[error("offset {offset} is outside the {len} durable bytes of {file}")]
    OutOfRange {
        /// The file.
        file: FileName,
        /// The requested offset.
        offset: u64,
        /// The file's durable length.
        len: u64,
    },
    /// A bit index above 7.
    #[error("bit {0} is not in 0..=7")]
    Bit(u8),
    /// A fault probability outside `0.0..=1.0`.
    #[error("probability {name} = {value} is outside 0..=1")]
    Probability {
        /// The field.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

/// One flipped bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitFlip {
    /// The damaged file.
    pub file: FileName,
    /// Offset of the damaged byte.
    pub offset: u64,
    /// Index of the flipped bit in that byte (0 is the least significant).
    pub bit: u8,
}

/// Both images of one file, for comparing a disk before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileImage {
    /// The bytes a reader sees.
    pub visible: Vec<u8>,
    /// The bytes that survive a crash.
    pub durable: Vec<u8>,
    /// How many writes are not yet synced.
    pub unsynced_writes: usize,
}

#[derive(Clone, Debug)]
struct UnsyncedWrite {
    offset: usize,
    data: Bytes,
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    visible: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<UnsyncedWrite>,
}

/// Writes `data` at `offset`, filling any gap before it with zeros.
fn apply(image: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(data);
}

impl SimFile {
    fn make_durable(&mut self) {
        for write in self.unsynced.drain(..) {
            apply(&mut self.durable, write.offset, &write.data);
        }
        debug_assert_eq!(self.durable, self.visible, "visible = durable + unsynced writes");
    }
}

/// `p` as a decision; probabilities are validated when a disk is made, and
/// clamped here so that a bad one can never panic.
fn chance(rng: &mut impl Rng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}

fn failure(kind: ErrorKind, message: String) -> DiskFailure {
    DiskFailure { kind, message }
}

fn no_such_file(file: &FileName) -> DiskFailure {
    failure(ErrorKind::NotFound, format!("no file named {file}"))
}

/// The byte range `offset..offset + len`, if it lies below [`FILE_BYTES_MAX`].
fn checked_range(file: &FileName, offset: u64, len: u64) -> Result<(usize, usize), DiskFailure> {
    match offset.checked_add(len) {
        Some(end) if end <= FILE_BYTES_MAX => {
            // Both fit in usize: FILE_BYTES_MAX is far below usize::MAX.
            Ok((offset as usize, end as usize))
        }
        _ => Err(failure(
            ErrorKind::FileTooLarge,
            format!("{len} bytes at offset {offset} of {file} exceed the {FILE_BYTES_MAX}-byte file limit"),
        )),
    }
}

/// An in-memory directory with a fault model. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    files: BTreeMap<FileName, SimFile>,
    faults: DiskFaults,
    counts: DiskFaultCounts,
}

impl SimDisk {
    /// An empty directory with the given faults.
    ///
    /// # Errors
    ///
    /// A probability outside `0.0..=1.0`.
    pub fn new(faults: DiskFaults) -> Result<Self, SimDiskError> {
        faults.validate()?;
        Ok(Self { files: BTreeMap::new(), faults, counts: DiskFaultCounts::default() })
    }

    /// The fault probabilities in force.
    pub fn faults(&self) -> DiskFaults {
        self.faults
    }

    /// Changes the fault probabilities (for example to heal the disk).
    ///
    /// # Errors
    ///
    /// A probability outside `0.0..=1.0`; the old faults stay.
    pub fn set_faults(&mut self, faults: DiskFaults) -> Result<(), SimDiskError> {
        faults.validate()?;
        self.faults = faults;
        Ok(())
    }

    /// What the disk has done so far.
    pub fn counts(&self) -> DiskFaultCounts {
        self.counts
    }

    /// Executes one operation, drawing any fault from `rng`.
    ///
    /// # Errors
    ///
    /// What a real disk would report: `NotFound` for a missing file,
    /// `AlreadyExists` when creating an existing one, `UnexpectedEof` for a
    /// read past the end, `FileTooLarge` past [`FILE_BYTES_MAX`], and `Other`
    /// ("injected ...") for an injected write or sync failure.
    pub fn execute(&mut self, op: &DiskOp, rng: &mut impl Rng) -> Result<DiskDone, DiskFailure> {
        match op {
            DiskOp::List { .. } => Ok(DiskDone::Listed(self.list())),
            DiskOp::Read { file, offset, len, .. } => {
                let stored = self.files.get(file).ok_or_else(|| no_such_file(file))?;
                let (start, end) = checked_range(file, *offset, *len)?;
                let Some(bytes) = stored.visible.get(start..end) else {
                    return Err(failure(
                        ErrorKind::UnexpectedEof,
                        format!(
                            "read of {len} bytes at offset {offset} runs past the end of {file} ({} bytes)",
                            stored.visible.len()
                        ),
                    ));
                };
                Ok(DiskDone::Read(Bytes::copy_from_slice(bytes)))
            }
            DiskOp::Create { file, .. } => {
                if self.files.contains_key(file) {
                    return Err(failure(ErrorKind::AlreadyExists, format!("{file} already exists")));
                }
                self.files.insert(file.clone(), SimFile::default());
                Ok(DiskDone::Done)
            }
            DiskOp::Write { file, offset, data, .. } => self.write(file, *offset, data, rng),
            DiskOp::Sync { file, .. } => {
                let failed = chance(rng, self.faults.sync_error);
                let stored = self.files.get_mut(file).ok_or_else(|| no_such_file(file))?;
                if failed {
                    self.counts.sync_errors += 1;
                    return Err(failure(ErrorKind::Other, format!("{INJECTED} sync failure on {file}")));
                }
                stored.make_durable();
                Ok(DiskDone::Done)
            }
            // Creations and removals are durable at once in this model, so a
            // directory sync has nothing left to do.
            DiskOp::SyncDirectory { .. } => Ok(DiskDone::Done),
            DiskOp::Truncate { file, len, .. } => {
                let (_, end) = checked_range(file, 0, *len)?;
                let stored = self.files.get_mut(file).ok_or_else(|| no_such_file(file))?;
                stored.visible.resize(end, 0);
                stored.unsynced.clear();
                stored.durable.clone_from(&stored.visible);
                Ok(DiskDone::Done)
            }
            DiskOp::Remove { file, .. } => {
                // Removing a missing file counts as done, as the core expects.
                self.files.remove(file);
                Ok(DiskDone::Done)
            }
        }
    }

    fn write(
        &mut self,
        file: &FileName,
        offset: u64,
        data: &Bytes,
        rng: &mut impl Rng,
    ) -> Result<DiskDone, DiskFailure> {
        let (start, _) = checked_range(file, offset, data.len() as u64)?;
        if !self.files.contains_key(file) {
            return Err(no_such_file(file));
        }
        let failed = chance(rng, self.faults.write_error);
        let written = if failed {
            // Half of the failures write nothing, the others a random prefix.
            if rng.random_bool(0.5) { 0 } else { rng.random_range(0..=data.len()) }
        } else {
            data.len()
        };
        let stored = self.files.get_mut(file).expect("checked above");
        if written > 0 {
            let data = data.slice(..written);
            apply(&mut stored.visible, start, &data);
            stored.unsynced.push(UnsyncedWrite { offset: start, data });
        }
        if failed {
            self.counts.write_errors += 1;
            return Err(failure(
                ErrorKind::Other,
                format!("{INJECTED} write failure on {file} after {written} of {} bytes", data.len()),
            ));
        }
        Ok(DiskDone::Done)
    }

    fn list(&self) -> Vec<ListedFile> {
        // BTreeMap order is name order, as the real binding sorts.
        self.files
            .iter()
            .map(|(name, file)| ListedFile { name: name.clone(), len: file.visible.len() as u64 })
            .collect()
    }

    /// A power loss: every file keeps its durable image plus an in-order
    /// prefix of its unsynced writes (a third of the time none, a third all,
    /// a third a random count); the first write not kept may be torn, with
    /// probability [`DiskFaults::torn_write`]. Afterwards nothing is
    /// unsynced and the visible image equals the durable one.
    pub fn crash(&mut self, rng: &mut impl Rng) {
        self.counts.crashes += 1;
        let torn_write = self.faults.torn_write;
        for file in self.files.values_mut() {
            let pending = file.unsynced.len();
            if pending == 0 {
                continue;
            }
            let kept = match rng.random_range(0..3) {
                0 => 0,
                1 => pending,
                _ => rng.random_range(0..=pending),
            };
            for write in &file.unsynced[..kept] {
                apply(&mut file.durable, write.offset, &write.data);
            }
            if let Some(write) = file.unsynced.get(kept)
                && write.data.len() > 1
                && chance(rng, torn_write)
            {
                let prefix = rng.random_range(1..write.data.len());
                apply(&mut file.durable, write.offset, &write.data[..prefix]);
                self.counts.torn_writes += 1;
            }
            self.counts.unsynced_writes_lost += (pending - kept) as u64;
            file.unsynced.clear();
            file.visible.clone_from(&file.durable);
        }
    }

    /// The worst power loss: every unsynced write is lost whole.
    pub fn crash_losing_all_unsynced(&mut self) {
        self.counts.crashes += 1;
        for file in self.files.values_mut() {
            self.counts.unsynced_writes_lost += file.unsynced.len() as u64;
            file.unsynced.clear();
            file.visible.clone_from(&file.durable);
        }
    }

    /// Flips bit `bit` of the byte at `offset` of `file`, in the durable
    /// image and, where it reaches that far, the visible one (rot of the
    /// medium under the page cache).
    ///
    /// # Errors
    ///
    /// No such file, an offset outside its durable bytes, or a bit above 7.
    pub fn flip_bit(&mut self, file: &FileName, offset: u64, bit: u8) -> Result<(), SimDiskError> {
        if bit > 7 {
            return Err(SimDiskError::Bit(bit));
        }
        let stored = self.files.get_mut(file).ok_or_else(|| SimDiskError::NoSuchFile(file.clone()))?;
        let len = stored.durable.len() as u64;
        let index = usize::try_from(offset).ok().filter(|&index| index < stored.durable.len());
        let Some(index) = index else {
            return Err(SimDiskError::OutOfRange { file: file.clone(), offset, len });
        };
        stored.durable[index] ^= 1 << bit;
        if let Some(byte) = stored.visible.get_mut(index) {
            *byte ^= 1 << bit;
        }
        self.counts.bit_flips += 1;
        Ok(())
    }

    /// Flips one random bit of one random file with durable bytes; `None`
    /// when every file is empty.
    pub fn rot_random(&mut self, rng: &mut impl Rng) -> Option<BitFlip> {
        let candidates: Vec<FileName> = self
            .files
            .iter()
            .filter(|(_, file)| !file.durable.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let file = candidates[rng.random_range(0..candidates.len())].clone();
        let len = self.files[&file].durable.len() as u64;
        let offset = rng.random_range(0..len);
        let bit = rng.random_range(0..8u8);
        self.flip_bit(&file, offset, bit).ok()?;
        Some(BitFlip { file, offset, bit })
    }

    /// The names of all files, in order.
    pub fn file_names(&self) -> Vec<FileName> {
        self.files.keys().cloned().collect()
    }

    /// The bytes a reader of `file` sees.
    pub fn visible(&self, file: &FileName) -> Option<&[u8]> {
        self.files.get(file).map(|stored| stored.visible.as_slice())
    }

    /// The bytes of `file` that survive a crash.
    pub fn durable(&self, file: &FileName) -> Option<&[u8]> {
        self.files.get(file).map(|stored| stored.durable.as_slice())
    }

    /// How many writes to `file` are not yet synced.
    pub fn unsynced_writes(&self, file: &FileName) -> usize {
        self.files.get(file).map_or(0, |stored| stored.unsynced.len())
    }

    /// Both images of every file, to compare a disk before and after.
    pub fn image(&self) -> BTreeMap<FileName, FileImage> {
        self.files
            .iter()
            .map(|(name, file)| {
                let image = FileImage {
                    visible: file.visible.clone(),
                    durable: file.durable.clone(),
                    unsynced_writes: file.unsynced.len(),
                };
                (name.clone(), image)
            })
            .collect()
    }
}
