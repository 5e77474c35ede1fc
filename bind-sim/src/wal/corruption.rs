//! The bit-rot scenario: acknowledged batches, one bit flipped inside a
//! batch that is not the newest, then a restart. Recovery must refuse to
//! open, naming the damaged segment, an offset inside the damaged batch at
//! or before the flipped byte, and a first affected sequence number no
//! later than the batch's; it must leave every byte on disk as it was (the
//! damaged batch was acknowledged: dropping it silently would lose it).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use octopii_core::disk::{DiskOp, FileName};
use octopii_core::wal::format::{COMMIT_BODY_BYTES, RECORD_HEADER_BYTES};
use octopii_core::wal::{Corruption, RecoveryError, WalConfig, WalError};
use octopii_core::{Command, Event, KernelConfig, Reply};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::{BitFlip, DiskFaults, SimDisk};
use crate::step::StepNode;
use crate::time::VirtualClock;

/// Most disk operations one step of the scenario may take.
const STEP_OPS_MAX: usize = 10_000;

/// One batch as it was written: one `Write` operation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WrittenBatch {
    file: FileName,
    offset: u64,
    len: u64,
    first_seq: u64,
}

/// The outcome of one corruption scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptionRun {
    /// The scenario's seed.
    pub seed: u64,
    /// Batches written (all acknowledged).
    pub batches: usize,
    /// Segment files on disk.
    pub segments: usize,
    /// The bit flipped.
    pub flip: Option<BitFlip>,
    /// First sequence number of the damaged batch.
    pub batch_first_seq: Option<u64>,
    /// What recovery reported.
    pub corruption: Option<Corruption>,
    /// The broken property, if any.
    pub violation: Option<String>,
}

impl CorruptionRun {
    /// The command that replays this scenario.
    pub fn replay_command(&self) -> String {
        format!("cargo run -p octopii-sim -- wal --scenario corruption --seed {}", self.seed)
    }
}

impl fmt::Display for CorruptionRun {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "seed {}: {} batches in {} segments", self.seed, self.batches, self.segments)?;
        if let Some(flip) = &self.flip {
            write!(formatter, "; flipped bit {} of byte {} of {}", flip.bit, flip.offset, flip.file)?;
        }
        if let Some(seq) = self.batch_first_seq {
            write!(formatter, " (batch from seq {seq})")?;
        }
        if let Some(corruption) = &self.corruption {
            write!(formatter, "; recovery reported: {corruption}")?;
        }
        if let Some(violation) = &self.violation {
            write!(formatter, "\nVIOLATION: {violation}\nreplay: {}", self.replay_command())?;
        }
        Ok(())
    }
}

/// Runs the scenario for `seed`. A broken property is reported in
/// [`CorruptionRun::violation`], never as a panic.
pub fn run_corruption(seed: u64) -> CorruptionRun {
    let mut run = CorruptionRun {
        seed,
        batches: 0,
        segments: 0,
        flip: None,
        batch_first_seq: None,
        corruption: None,
        violation: None,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut attempt = run.clone();
        let result = scenario(seed, &mut attempt);
        (attempt, result)
    }));
    match outcome {
        Ok((attempt, result)) => {
            run = attempt;
            run.violation = result.err();
        }
        Err(payload) => run.violation = Some(format!("panicked: {}", super::panic_message(payload.as_ref()))),
    }
    run
}

struct Bench {
    rng: ChaCha8Rng,
    clock: VirtualClock,
    disk: SimDisk,
    config: KernelConfig,
    next_payload: u64,
}

impl Bench {
    fn start(&self) -> Result<StepNode, String> {
        StepNode::start(self.config.clone())
            .map_err(|error| format!("the kernel refused its config: {error}"))
    }

    /// Runs `node` until it has no disk operation left; returns the batches
    /// it wrote.
    fn settle(&mut self, node: &mut StepNode) -> Result<Vec<WrittenBatch>, String> {
        let executed = node
            .run(&mut self.clock, &mut self.disk, &mut self.rng, STEP_OPS_MAX)
            .ok_or_else(|| format!("the kernel asked for more than {STEP_OPS_MAX} disk operations"))?;
        let mut batches = Vec::new();
        for (op, result) in executed {
            if let (DiskOp::Write { file, offset, data, .. }, Ok(_)) = (op, result) {
                batches.push(written_batch(file, offset, &data)?);
            }
        }
        Ok(batches)
    }

    fn payload(&mut self) -> Bytes {
        let id = self.next_payload;
        self.next_payload += 1;
        let len = self.rng.random_range(8..=1_500);
        let mut payload = BytesMut::with_capacity(len);
        payload.put_u64_le(id);
        payload.extend((8..len).map(|index| (index as u8) ^ (id as u8)));
        payload.freeze()
    }

    fn open(&mut self) -> Result<(StepNode, Result<(), WalError>), String> {
        let mut node = self.start()?;
        let id = node.command(&self.clock, Command::Open);
        self.settle(&mut node)?;
        match node.take_reply(id) {
            Some(Reply::Opened(result)) => Ok((node, result.map(|_| ()))),
            other => Err(format!("open answered {other:?}")),
        }
    }
}

/// The batch a `Write` carried: the commit record at its end names the
/// batch's first sequence number.
fn written_batch(file: FileName, offset: u64, data: &Bytes) -> Result<WrittenBatch, String> {
    let commit_body = data
        .len()
        .checked_sub(COMMIT_BODY_BYTES)
        .filter(|_| data.len() >= RECORD_HEADER_BYTES + COMMIT_BODY_BYTES)
        .ok_or_else(|| format!("a {}-byte write cannot hold a batch", data.len()))?;
    let first_seq = u64::from_le_bytes(
        data[commit_body..commit_body + 8].try_into().expect("an 8-byte slice of a checked range"),
    );
    Ok(WrittenBatch { file, offset, len: data.len() as u64, first_seq })
}

fn expect_corruption(what: &str, result: Result<(), WalError>) -> Result<Corruption, String> {
    match result {
        Err(WalError::Recovery(RecoveryError::Corrupted(corruption))) => Ok(corruption),
        other => Err(format!("{what}: expected corruption to be reported, got {other:?}")),
    }
}

fn scenario(seed: u64, run: &mut CorruptionRun) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let wal = WalConfig {
        batch_records_max: rng.random_range(1..=8),
        segment_bytes_target: 4096,
        ..WalConfig::default()
    };
    let mut bench = Bench {
        rng,
        clock: VirtualClock::new(),
        disk: SimDisk::new(DiskFaults::NONE).expect("no faults is a valid profile"),
        config: KernelConfig { wal },
        next_payload: 0,
    };

    // Acknowledged batches over several segments.
    let (mut node, opened) = bench.open()?;
    opened.map_err(|error| format!("a fresh log failed to open: {error}"))?;
    let mut batches = Vec::new();
    let rounds = bench.rng.random_range(12..=30);
    for _ in 0..rounds {
        let count = bench.rng.random_range(1..=6);
        let ids: Vec<_> = (0..count)
            .map(|_| {
                let payload = bench.payload();
                node.command(&bench.clock, Command::Append(payload))
            })
            .collect();
        batches.extend(bench.settle(&mut node)?);
        for id in ids {
            match node.take_reply(id) {
                Some(Reply::Appended(Ok(_))) => {}
                other => return Err(format!("an append on a healthy disk answered {other:?}")),
            }
        }
    }
    run.batches = batches.len();
    run.segments = bench.disk.file_names().len();
    if let Some(file) = bench.disk.file_names().into_iter().find(|file| bench.disk.unsynced_writes(file) > 0)
    {
        return Err(format!("{file} has unsynced writes although every append was acknowledged"));
    }

    // Rot one bit of a batch that is not the newest.
    let Some(older) = batches.len().checked_sub(1).filter(|&older| older > 0) else {
        return Err(String::from("fewer than two batches were written"));
    };
    let batch = batches[bench.rng.random_range(0..older)].clone();
    let offset = batch.offset + bench.rng.random_range(0..batch.len);
    let bit = bench.rng.random_range(0..8u8);
    bench.disk.flip_bit(&batch.file, offset, bit).map_err(|error| format!("flip failed: {error}"))?;
    run.flip = Some(BitFlip { file: batch.file.clone(), offset, bit });
    run.batch_first_seq = Some(batch.first_seq);

    // A read of the open log verifies checksums too.
    let read = node.command(&bench.clock, Command::ReadAll);
    bench.settle(&mut node)?;
    match node.take_reply(read) {
        Some(Reply::Entries(Err(WalError::Corrupted(found)))) if found.segment == batch.file => {}
        other => return Err(format!("a read over the damaged batch answered {other:?}")),
    }
    drop(node);

    // Recovery must refuse, precisely, and change nothing.
    let image = bench.disk.image();
    let (mut node, opened) = bench.open()?;
    let corruption = expect_corruption("recovery", opened)?;
    run.corruption = Some(corruption.clone());
    if corruption.segment != batch.file {
        return Err(format!("corruption reported in {}, but {} was damaged", corruption.segment, batch.file));
    }
    if corruption.offset > offset || corruption.offset < batch.offset {
        return Err(format!(
            "corruption reported at byte {}, but the damaged batch spans {}..{} and byte {offset} was flipped",
            corruption.offset,
            batch.offset,
            batch.offset + batch.len
        ));
    }
    if corruption.seq_from > batch.first_seq {
        return Err(format!(
            "corruption said sequence numbers from {} may be affected, but the damaged batch starts at {}",
            corruption.seq_from, batch.first_seq
        ));
    }
    if !node.events().iter().any(|event| matches!(event, Event::WalRecoveryFailed(_))) {
        return Err(String::from("recovery failed without reporting Event::WalRecoveryFailed"));
    }
    let read = node.command(&bench.clock, Command::ReadAll);
    bench.settle(&mut node)?;
    match node.take_reply(read) {
        Some(Reply::Entries(Err(WalError::Recovery(_)))) => {}
        other => return Err(format!("a read of a log that failed to open answered {other:?}")),
    }
    drop(node);
    if bench.disk.image() != image {
        return Err(String::from("recovery changed the damaged files: data was silently truncated"));
    }

    // Reopening reports the same thing again.
    let (_node, reopened) = bench.open()?;
    let again = expect_corruption("second recovery", reopened)?;
    if again != corruption {
        return Err(format!("a second recovery reported {again}, the first {corruption}"));
    }
    Ok(())
}
