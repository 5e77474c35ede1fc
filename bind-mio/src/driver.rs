//! The loop body every binding runs: feed one input to the kernel, then
//! execute what it asks for. It decides nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use octopii_core::disk::DiskCompletion;
use octopii_core::{Command, CommandId, Event, Input, Kernel, Output, Reply};

use crate::disk::DiskThread;

/// Where the reply to one command goes.
pub type ReplySink = Box<dyn FnOnce(Reply) + Send>;

/// Owns a kernel and its disk thread, and delivers replies.
pub struct Driver {
    kernel: Kernel,
    disk: DiskThread,
    waiters: BTreeMap<CommandId, ReplySink>,
    next_command: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Driver")
            .field("kernel", &self.kernel)
            .field("waiting", &self.waiters.len())
            .finish()
    }
}

impl Driver {
    /// Takes over a freshly built kernel and executes its first outputs.
    pub fn new(kernel: Kernel, disk: DiskThread) -> Self {
        let mut driver = Self { kernel, disk, waiters: BTreeMap::new(), next_command: 0 };
        driver.drain();
        driver
    }

    /// Passes a caller's command; `sink` receives the reply.
    pub fn command(&mut self, now: Instant, command: Command, sink: ReplySink) {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        self.waiters.insert(id, sink);
        self.input(now, Input::Command { id, command });
    }

    /// Passes disk completions, in the order the disk thread delivered them.
    pub fn disk_done(&mut self, now: Instant, completions: Vec<DiskCompletion>) {
        for completion in completions {
            self.input(now, Input::Disk(completion));
        }
    }

    /// Passes a timeout if the kernel's timer has expired at `now`.
    pub fn timeout(&mut self, now: Instant) {
        if self.next_timeout().is_some_and(|deadline| deadline <= now) {
            self.input(now, Input::Timeout);
        }
    }

    /// When [`Driver::timeout`] should next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.kernel.poll_timeout().map(|(deadline, _reason)| deadline)
    }

    /// Stops the disk thread after the operations already queued and waits
    /// for it, releasing the data directory.
    pub fn close(self) {
        self.disk.close();
    }

    fn input(&mut self, now: Instant, input: Input) {
        self.kernel.handle_input(now, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.kernel.poll_output() {
            match output {
                Output::Disk(op) => self.disk.submit(op),
                Output::Reply { id, reply } => {
                    let sink = self.waiters.remove(&id).expect("the kernel answers each command once");
                    sink(reply);
                }
                Output::Event(event) => report(&event),
            }
        }
    }
}

fn report(event: &Event) {
    match event {
        Event::WalRecovered(report) => tracing::info!(?report, "wal recovered"),
        Event::WalRecoveryFailed(error) => tracing::error!(%error, "wal recovery failed"),
        Event::WalFailed(error) => tracing::error!(%error, "wal failed; reopen to recover"),
        Event::WalSyncOverdue { elapsed } => tracing::warn!(?elapsed, "wal sync is slow"),
    }
}
