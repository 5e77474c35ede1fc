//! The simulated disk's fault model: what survives a crash, torn writes,
//! failed writes and syncs, bit flips, and errors (never panics) on bad
//! requests.

use std::io::ErrorKind;

use bytes::Bytes;
use octopii_core::disk::{DiskDone, DiskFailure, DiskOp, FileName, IoId, ListedFile};
use octopii_sim::disk::{DiskFaults, FILE_BYTES_MAX, INJECTED, SimDisk, SimDiskError};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn name(text: &str) -> FileName {
    FileName::new(text).unwrap()
}

fn disk(faults: DiskFaults) -> SimDisk {
    SimDisk::new(faults).unwrap()
}

fn run(disk: &mut SimDisk, rng: &mut ChaCha8Rng, op: DiskOp) -> Result<DiskDone, DiskFailure> {
    disk.execute(&op, rng)
}

fn create(disk: &mut SimDisk, rng: &mut ChaCha8Rng, file: &str) {
    run(disk, rng, DiskOp::Create { io: IoId(0), file: name(file) }).unwrap();
}

fn write(
    disk: &mut SimDisk,
    rng: &mut ChaCha8Rng,
    file: &str,
    offset: u64,
    data: &[u8],
) -> Result<(), DiskFailure> {
    let op = DiskOp::Write { io: IoId(0), file: name(file), offset, data: Bytes::copy_from_slice(data) };
    run(disk, rng, op).map(|_| ())
}

fn sync(disk: &mut SimDisk, rng: &mut ChaCha8Rng, file: &str) -> Result<(), DiskFailure> {
    run(disk, rng, DiskOp::Sync { io: IoId(0), file: name(file) }).map(|_| ())
}

/// Three appends of distinct bytes: the first synced, two not.
fn three_writes(disk: &mut SimDisk, rng: &mut ChaCha8Rng) -> (Vec<u8>, [usize; 3]) {
    let (synced, second, third) = (vec![1u8; 100], vec![2u8; 50], vec![3u8; 70]);
    create(disk, rng, "a.wal");
    write(disk, rng, "a.wal", 0, &synced).unwrap();
    sync(disk, rng, "a.wal").unwrap();
    write(disk, rng, "a.wal", 100, &second).unwrap();
    write(disk, rng, "a.wal", 150, &third).unwrap();
    let all = [synced, second, third].concat();
    (all, [100, 150, 220])
}

#[test]
fn a_crash_keeps_synced_bytes_and_an_in_order_prefix_of_the_rest() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut disk = disk(DiskFaults::NONE);
        let (all, boundaries) = three_writes(&mut disk, &mut rng);
        assert_eq!(disk.visible(&name("a.wal")).unwrap(), &all[..]);
        assert_eq!(disk.durable(&name("a.wal")).unwrap(), &all[..100]);
        assert_eq!(disk.unsynced_writes(&name("a.wal")), 2);
        disk.crash(&mut rng);
        let durable = disk.durable(&name("a.wal")).unwrap().to_vec();
        assert_eq!(disk.visible(&name("a.wal")).unwrap(), &durable[..], "after a crash reads see the medium");
        assert_eq!(disk.unsynced_writes(&name("a.wal")), 0);
        assert!(boundaries.contains(&durable.len()), "no tearing without torn writes: {}", durable.len());
        assert_eq!(durable[..], all[..durable.len()], "writes land in order");
        outcomes.insert(durable.len());
    }
    assert_eq!(outcomes.into_iter().collect::<Vec<_>>(), vec![100, 150, 220], "every prefix happens");
}

#[test]
fn a_torn_write_leaves_a_prefix_of_its_bytes() {
    let mut torn = 0;
    for seed in 0..200 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut disk = disk(DiskFaults { torn_write: 1.0, ..DiskFaults::NONE });
        let (all, boundaries) = three_writes(&mut disk, &mut rng);
        disk.crash(&mut rng);
        let durable = disk.durable(&name("a.wal")).unwrap();
        assert!(durable.len() >= 100, "synced bytes survive");
        assert_eq!(durable[..], all[..durable.len()], "a torn write is a prefix of the write");
        if !boundaries.contains(&durable.len()) {
            torn += 1;
        }
    }
    assert!(torn > 50, "with torn_write = 1 most crashes that lose a write tear it: {torn}");
}

#[test]
fn the_worst_crash_loses_exactly_the_unsynced_writes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut disk = disk(DiskFaults::NONE);
    let (all, _) = three_writes(&mut disk, &mut rng);
    disk.crash_losing_all_unsynced();
    assert_eq!(disk.durable(&name("a.wal")).unwrap(), &all[..100]);
    assert_eq!(disk.visible(&name("a.wal")).unwrap(), &all[..100]);
    let counts = disk.counts();
    assert_eq!((counts.crashes, counts.unsynced_writes_lost), (1, 2));
}

#[test]
fn a_failed_sync_keeps_the_durable_state_and_the_page_cache() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut disk = disk(DiskFaults { sync_error: 1.0, ..DiskFaults::NONE });
    create(&mut disk, &mut rng, "a.wal");
    write(&mut disk, &mut rng, "a.wal", 0, b"hello").unwrap();
    let failure = sync(&mut disk, &mut rng, "a.wal").unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Other);
    assert!(failure.message.contains(INJECTED), "{failure}");
    assert_eq!(disk.durable(&name("a.wal")).unwrap(), b"");
    assert_eq!(disk.visible(&name("a.wal")).unwrap(), b"hello");
    assert_eq!(disk.unsynced_writes(&name("a.wal")), 1, "the write is still unsynced");

    disk.set_faults(DiskFaults::NONE).unwrap();
    sync(&mut disk, &mut rng, "a.wal").unwrap();
    assert_eq!(disk.durable(&name("a.wal")).unwrap(), b"hello", "a later sync succeeds");
    assert_eq!(disk.counts().sync_errors, 1);
}

#[test]
fn a_failed_write_leaves_nothing_or_a_prefix() {
    let mut prefixes = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut disk = disk(DiskFaults { write_error: 1.0, ..DiskFaults::NONE });
        create(&mut disk, &mut rng, "a.wal");
        let data: Vec<u8> = (1..=64).collect();
        let failure = write(&mut disk, &mut rng, "a.wal", 0, &data).unwrap_err();
        assert_eq!(failure.kind, ErrorKind::Other);
        assert!(failure.message.contains(INJECTED), "{failure}");
        let visible = disk.visible(&name("a.wal")).unwrap();
        assert_eq!(visible, &data[..visible.len()]);
        assert_eq!(disk.durable(&name("a.wal")).unwrap(), b"", "nothing is durable before a sync");
        prefixes.insert(visible.len());
    }
    assert!(prefixes.contains(&0) && prefixes.len() > 5, "{prefixes:?}");
}

#[test]
fn create_truncate_and_remove_are_durable_at_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut disk = disk(DiskFaults::NONE);
    create(&mut disk, &mut rng, "a.wal");
    create(&mut disk, &mut rng, "b.wal");
    write(&mut disk, &mut rng, "a.wal", 0, b"0123456789").unwrap();
    run(&mut disk, &mut rng, DiskOp::Truncate { io: IoId(0), file: name("a.wal"), len: 4 }).unwrap();
    run(&mut disk, &mut rng, DiskOp::Remove { io: IoId(0), file: name("b.wal") }).unwrap();
    disk.crash(&mut rng);
    assert_eq!(disk.durable(&name("a.wal")).unwrap(), b"0123", "truncation syncs what it keeps");
    assert_eq!(disk.file_names(), vec![name("a.wal")]);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut disk = disk(DiskFaults::NONE);
    let missing = run(&mut disk, &mut rng, DiskOp::Read { io: IoId(0), file: name("x"), offset: 0, len: 1 });
    assert_eq!(missing.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(write(&mut disk, &mut rng, "x", 0, b"1").unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(sync(&mut disk, &mut rng, "x").unwrap_err().kind, ErrorKind::NotFound);
    run(&mut disk, &mut rng, DiskOp::Remove { io: IoId(0), file: name("x") })
        .expect("removing a missing file is done");

    create(&mut disk, &mut rng, "a.wal");
    let again = run(&mut disk, &mut rng, DiskOp::Create { io: IoId(0), file: name("a.wal") });
    assert_eq!(again.unwrap_err().kind, ErrorKind::AlreadyExists);
    write(&mut disk, &mut rng, "a.wal", 0, b"abc").unwrap();
    let short =
        run(&mut disk, &mut rng, DiskOp::Read { io: IoId(0), file: name("a.wal"), offset: 1, len: 3 });
    assert_eq!(short.unwrap_err().kind, ErrorKind::UnexpectedEof);
    let huge =
        run(&mut disk, &mut rng, DiskOp::Read { io: IoId(0), file: name("a.wal"), offset: u64::MAX, len: 2 });
    assert_eq!(huge.unwrap_err().kind, ErrorKind::FileTooLarge);
    assert_eq!(
        write(&mut disk, &mut rng, "a.wal", FILE_BYTES_MAX, b"1").unwrap_err().kind,
        ErrorKind::FileTooLarge
    );
    let truncate = DiskOp::Truncate { io: IoId(0), file: name("a.wal"), len: u64::MAX };
    assert_eq!(run(&mut disk, &mut rng, truncate).unwrap_err().kind, ErrorKind::FileTooLarge);
    let read = run(&mut disk, &mut rng, DiskOp::Read { io: IoId(0), file: name("a.wal"), offset: 1, len: 2 });
    assert_eq!(read.unwrap(), DiskDone::Read(Bytes::from_static(b"bc")));

    assert_eq!(disk.flip_bit(&name("a.wal"), 0, 8), Err(SimDiskError::Bit(8)));
    assert!(
        matches!(disk.flip_bit(&name("a.wal"), 0, 0), Err(SimDiskError::OutOfRange { .. })),
        "nothing durable yet"
    );
    assert!(matches!(disk.flip_bit(&name("zz"), 0, 0), Err(SimDiskError::NoSuchFile(_))));
    let invalid = DiskFaults { write_error: 1.5, ..DiskFaults::NONE };
    assert!(matches!(SimDisk::new(invalid), Err(SimDiskError::Probability { name: "write_error", .. })));
    let nan = DiskFaults { torn_write: f64::NAN, ..DiskFaults::NONE };
    assert!(disk.set_faults(nan).is_err());
}

#[test]
fn listing_is_sorted_with_visible_lengths() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut disk = disk(DiskFaults::NONE);
    for file in ["c.wal", "a.wal", "b.wal"] {
        create(&mut disk, &mut rng, file);
    }
    write(&mut disk, &mut rng, "b.wal", 0, b"12345").unwrap();
    let listed = run(&mut disk, &mut rng, DiskOp::List { io: IoId(0) }).unwrap();
    let expected = [("a.wal", 0), ("b.wal", 5), ("c.wal", 0)]
        .map(|(file, len)| ListedFile { name: name(file), len })
        .to_vec();
    assert_eq!(listed, DiskDone::Listed(expected));
}

#[test]
fn bit_flips_damage_durable_and_visible_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut disk = disk(DiskFaults::NONE);
    create(&mut disk, &mut rng, "a.wal");
    write(&mut disk, &mut rng, "a.wal", 0, &[0u8; 32]).unwrap();
    sync(&mut disk, &mut rng, "a.wal").unwrap();
    disk.flip_bit(&name("a.wal"), 3, 2).unwrap();
    assert_eq!(disk.durable(&name("a.wal")).unwrap()[3], 4);
    assert_eq!(disk.visible(&name("a.wal")).unwrap()[3], 4);

    let flip = disk.rot_random(&mut rng).expect("a file has durable bytes");
    let ones: u32 = disk.durable(&name("a.wal")).unwrap().iter().map(|byte| byte.count_ones()).sum();
    let expected = if (flip.offset, flip.bit) == (3, 2) { 0 } else { 2 };
    assert_eq!(ones, expected, "exactly one more bit changed: {flip:?}");
    assert_eq!(disk.counts().bit_flips, 2);
    assert!(disk.rot_random(&mut rng).is_some());
    assert_eq!(SimDisk::new(DiskFaults::NONE).unwrap().rot_random(&mut rng), None, "nothing to rot");
}

/// One step of a random workload on one appended file.
#[derive(Clone, Debug)]
enum Step {
    Append(usize),
    Sync,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![4 => (0usize..300).prop_map(Step::Append), 2 => Just(Step::Sync), 1 => Just(Step::Crash)]
}

proptest! {
    /// Whatever the faults, the medium holds at least what was last synced,
    /// at most what was written, and always a byte prefix of what was
    /// written (appends land in order); reads see written bytes until a
    /// crash, and the medium after it.
    #[test]
    fn the_medium_is_always_a_prefix_between_synced_and_written(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..60),
        torn_write in 0.0f64..=1.0,
        sync_error in 0.0f64..=0.5,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut disk = disk(DiskFaults { torn_write, sync_error, ..DiskFaults::NONE });
        create(&mut disk, &mut rng, "a.wal");
        let file = name("a.wal");
        let (mut written, mut synced_len, mut counter) = (Vec::<u8>::new(), 0usize, 0u8);
        for step in steps {
            match step {
                Step::Append(len) => {
                    let data: Vec<u8> = (0..len).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                    write(&mut disk, &mut rng, "a.wal", written.len() as u64, &data).unwrap();
                    written.extend_from_slice(&data);
                }
                Step::Sync => {
                    if sync(&mut disk, &mut rng, "a.wal").is_ok() {
                        synced_len = written.len();
                    }
                }
                Step::Crash => {
                    disk.crash(&mut rng);
                    let durable = disk.durable(&file).unwrap();
                    prop_assert!(durable.len() >= synced_len && durable.len() <= written.len());
                    prop_assert_eq!(durable, &written[..durable.len()]);
                    written.truncate(durable.len());
                    synced_len = written.len();
                }
            }
            prop_assert_eq!(disk.visible(&file).unwrap(), &written[..]);
            prop_assert!(disk.durable(&file).unwrap().len() >= synced_len);
        }
    }
}
