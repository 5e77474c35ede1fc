//! Recovery bugs the simulator found, each reduced to a scripted scenario: the
//! kernel driven one disk operation at a time against the simulated disk.
//! Each test states the property the log documents and fails while the bug
//! is there; fixed ones stay as regression tests. Seeds that hit them in the
//! random sweep are named per test (seeds depend on the core's version).

use bytes::Bytes;
use octopii_core::disk::DiskOp;
use octopii_core::wal::WalConfig;
use octopii_core::{Command, CommandId, KernelConfig, Reply};
use octopii_sim::disk::{DiskFaults, SimDisk};
use octopii_sim::step::StepNode;
use octopii_sim::time::VirtualClock;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const OPS_MAX: usize = 1_000;

struct Bench {
    clock: VirtualClock,
    disk: SimDisk,
    rng: ChaCha8Rng,
}

impl Bench {
    fn new() -> Self {
        Self {
            clock: VirtualClock::new(),
            disk: SimDisk::new(DiskFaults::NONE).unwrap(),
            rng: ChaCha8Rng::seed_from_u64(0),
        }
    }

    fn start(&mut self) -> StepNode {
        let wal = WalConfig { segment_bytes_target: 4096, ..WalConfig::default() };
        StepNode::start(KernelConfig { wal }).unwrap()
    }

    fn settle(&mut self, node: &mut StepNode) {
        node.run(&mut self.clock, &mut self.disk, &mut self.rng, OPS_MAX).expect("the kernel settles");
    }

    /// Starts a node and opens the log; returns the recovered `next_seq`.
    fn open(&mut self) -> (StepNode, u64) {
        let mut node = self.start();
        let id = node.command(&self.clock, Command::Open);
        self.settle(&mut node);
        match node.take_reply(id) {
            Some(Reply::Opened(Ok(report))) => (node, report.next_seq),
            other => panic!("the log must open, got {other:?}"),
        }
    }

    fn append_acknowledged(&mut self, node: &mut StepNode, payload: Bytes) -> u64 {
        let id = node.command(&self.clock, Command::Append(payload));
        self.settle(node);
        match node.take_reply(id) {
            Some(Reply::Appended(Ok(seq))) => seq,
            other => panic!("append on a healthy disk answered {other:?}"),
        }
    }

    fn read_all(&mut self, node: &mut StepNode) -> Vec<u64> {
        let id = node.command(&self.clock, Command::ReadAll);
        self.settle(node);
        match node.take_reply(id) {
            Some(Reply::Entries(Ok(entries))) => entries.iter().map(|entry| entry.seq).collect(),
            other => panic!("read answered {other:?}"),
        }
    }

    /// Issues an append and executes only its operations up to and
    /// including the first `Write`: the batch sits in the page cache,
    /// unsynced, when the process dies.
    fn append_until_written(&mut self, node: &mut StepNode, payload: Bytes) -> CommandId {
        let id = node.command(&self.clock, Command::Append(payload));
        loop {
            let (op, result) = node
                .execute_one(&mut self.clock, &mut self.disk, &mut self.rng)
                .expect("the batch has a write");
            result.expect("a healthy disk");
            if matches!(op, DiskOp::Write { .. }) {
                return id;
            }
        }
    }
}

fn payload(len: usize) -> Bytes {
    Bytes::from(vec![7u8; len])
}

/// Fills the first segment with acknowledged entries to just below the
/// 4096-byte target: each 1000-byte entry takes 1052 bytes in a batch of
/// its own, after the 24-byte header, so three take 3180 bytes.
fn fill_first_segment(bench: &mut Bench, node: &mut StepNode) {
    for expected in 0..3 {
        assert_eq!(bench.append_acknowledged(node, payload(1000)), expected);
    }
}

/// Regression test. Found at d742a6f by `octopii-sim wal --seed 0 --ops 120
/// --faults full` (and about a third of all seeds at `--faults crash`), fixed
/// in 36d8f73: docs/wal.md says recovery removes a newest segment "shorter
/// than its header" (a torn creation), but a zero-length one was kept, and
/// the next rotation asked to create the same file again: `AlreadyExists`,
/// the log failed, and failed again after every restart until something
/// wrote into that file.
#[test]
fn recovery_removes_an_empty_newest_segment() {
    let mut bench = Bench::new();
    let (mut node, _) = bench.open();
    fill_first_segment(&mut bench, &mut node);
    // One more entry passes the target; the next batch starts a segment.
    assert_eq!(bench.append_acknowledged(&mut node, payload(1000)), 3);

    // The new segment's creation is durable, its first write is lost.
    let _lost = node.command(&bench.clock, Command::Append(payload(10)));
    let (create, _) = node.execute_one(&mut bench.clock, &mut bench.disk, &mut bench.rng).unwrap();
    assert!(matches!(create, DiskOp::Create { .. }), "rotation creates a segment first: {create:?}");
    drop(node);
    bench.disk.crash_losing_all_unsynced();

    let (mut node, next_seq) = bench.open();
    assert_eq!(next_seq, 4);
    let id = node.command(&bench.clock, Command::Append(payload(10)));
    bench.settle(&mut node);
    match node.take_reply(id) {
        Some(Reply::Appended(Ok(4))) => {}
        other => panic!(
            "after a crash that left an empty newest segment, the first append must succeed; got {other:?} \
             (recovery kept the empty file and the rotation tried to create it again)"
        ),
    }
}

/// Open at 1a68260. Found by `octopii-sim wal --seed 1 --ops 120 --faults
/// full` (this refusal to open), `--seed 3 --ops 200` (a reopen after a
/// failed sync), `--seed 71 --ops 120` (a flush acknowledged page-cache
/// data) and about one seed in ten at `--faults full`, always after a
/// process crash or a reopen: recovery reads the page cache and treats
/// every committed batch it finds as durable, without syncing it. A batch
/// written but never synced before the process died (or before a reopen
/// after a failed sync) is reported by `ReadAll` as durable and built upon,
/// and a later power loss takes it away: here the log then refuses to open
/// (`SequenceGap`), so an append acknowledged after the reopen is lost.
#[test]
fn recovery_does_not_build_on_unsynced_bytes() {
    let mut bench = Bench::new();
    let (mut node, _) = bench.open();
    fill_first_segment(&mut bench, &mut node);
    // Seq 3 is written into the page cache, pushing the first segment past
    // its target, and the process dies before the sync.
    bench.append_until_written(&mut node, payload(1000));
    drop(node);

    let (mut node, next_seq) = bench.open();
    assert_eq!(next_seq, 4, "recovery finds the unsynced batch in the page cache");
    let reported = bench.read_all(&mut node);
    assert_eq!(reported, vec![0, 1, 2, 3], "and reports it as durable");
    // The next batch rotates to a new segment and is acknowledged.
    let acknowledged = bench.append_acknowledged(&mut node, payload(10));
    assert_eq!(acknowledged, 4);
    drop(node);

    // Power loss: what was never synced is gone.
    bench.disk.crash_losing_all_unsynced();
    let mut node = bench.start();
    let id = node.command(&bench.clock, Command::Open);
    bench.settle(&mut node);
    match node.take_reply(id) {
        Some(Reply::Opened(Ok(_))) => {}
        other => panic!(
            "after a power loss the log must open with every acknowledged entry (seq {acknowledged}) and every \
             entry a read reported durable ({reported:?}); got {other:?}. Recovery trusted unsynced bytes: it \
             must sync the segments it recovers before reporting them durable"
        ),
    }
    let entries = bench.read_all(&mut node);
    assert!(entries.contains(&acknowledged), "acknowledged seq {acknowledged} is lost: {entries:?}");
    for seq in reported {
        assert!(entries.contains(&seq), "seq {seq}, reported durable, is lost: {entries:?}");
    }
}

/// The same root cause without rotation: entries a read returned as
/// durable after a reopen vanish at the next power loss.
#[test]
fn entries_a_read_returned_survive_a_power_loss() {
    let mut bench = Bench::new();
    let (mut node, _) = bench.open();
    assert_eq!(bench.append_acknowledged(&mut node, payload(100)), 0);
    bench.append_until_written(&mut node, payload(100));
    drop(node);

    let (mut node, _) = bench.open();
    let reported = bench.read_all(&mut node);
    assert_eq!(reported, vec![0, 1]);
    drop(node);
    bench.disk.crash_losing_all_unsynced();

    let (mut node, next_seq) = bench.open();
    let entries = bench.read_all(&mut node);
    assert_eq!(
        entries, reported,
        "ReadAll promises durable entries, but after a power loss the log ends at {next_seq}"
    );
}
