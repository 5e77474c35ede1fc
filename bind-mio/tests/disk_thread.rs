//! The disk-thread executor runs the same kernel to the same results as the
//! inline one: completions come back as inputs, in order.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::{Command, Kernel, KernelConfig, Reply};
use octopii_mio::disk::{DiskThread, FileDisk};
use octopii_mio::driver::{Driver, Executor};

/// Runs `commands` through a driver whose disk work happens on a disk
/// thread, and returns the replies in the order they came.
fn run(dir: &std::path::Path, commands: Vec<Command>) -> Vec<Reply> {
    let (completions, completed) = mpsc::channel();
    let disk = DiskThread::spawn(FileDisk::open(dir).unwrap(), move |burst| completions.send(burst).is_ok())
        .unwrap();
    let mut driver = Driver::new(Kernel::new(KernelConfig::default()).unwrap(), Executor::Thread(disk));
    let (replies, answers) = mpsc::channel();
    let expected = commands.len();
    for command in commands {
        let replies = replies.clone();
        driver.command(Instant::now(), command, Box::new(move |reply| replies.send(reply).unwrap()));
    }
    driver.drain();
    let mut received = Vec::new();
    while received.len() < expected {
        let burst = completed.recv_timeout(Duration::from_secs(10)).expect("the disk thread answers");
        driver.disk_done(Instant::now(), burst);
        driver.drain();
        received.extend(answers.try_iter());
    }
    driver.close();
    received
}

#[test]
fn a_disk_thread_executes_appends_durably_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let appends: Vec<Command> = (0..20).map(|i| Command::Append(Bytes::from(format!("entry {i}")))).collect();
    let mut commands = vec![Command::Open];
    commands.extend(appends);
    let replies = run(dir.path(), commands);
    let offsets: Vec<u64> = replies
        .iter()
        .filter_map(|reply| match reply {
            Reply::Appended(result) => Some(*result.as_ref().unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>());

    let replies = run(dir.path(), vec![Command::Open, Command::ReadAll]);
    let Reply::Entries(Ok(entries)) = &replies[1] else { panic!("{replies:?}") };
    assert_eq!(entries.len(), 20);
    assert_eq!(entries[19].payload, Bytes::from("entry 19"));
}
