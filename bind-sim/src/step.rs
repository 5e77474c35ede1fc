//! `StepNode`: a kernel driven by hand against a [`SimDisk`], one disk
//! operation at a time, for scripted scenarios where a test decides exactly
//! which operations run before a crash.
//!
//! It follows the binding contract (drain every output after every input,
//! execute disk operations one at a time in polled order) and decides
//! nothing; only the caller chooses when operations run and when the node
//! dies.

use std::collections::VecDeque;
use std::time::Duration;

use octopii_core::disk::{DiskCompletion, DiskDone, DiskFailure, DiskOp};
use octopii_core::wal::WalConfigError;
use octopii_core::{Command, CommandId, Event, Input, Kernel, KernelConfig, Output, Reply};
use rand::Rng;

use crate::disk::SimDisk;
use crate::time::VirtualClock;

/// Virtual time each executed disk operation takes.
const STEP_OP_DURATION: Duration = Duration::from_micros(50);

/// One kernel, its queue of disk operations, and the replies it gave.
#[derive(Debug)]
pub struct StepNode {
    kernel: Kernel,
    ops: VecDeque<DiskOp>,
    replies: Vec<(CommandId, Reply)>,
    events: Vec<Event>,
    next_command: u64,
}

impl StepNode {
    /// Starts a kernel (it begins recovery at once).
    ///
    /// # Errors
    ///
    /// An invalid config.
    pub fn start(config: KernelConfig) -> Result<Self, WalConfigError> {
        let kernel = Kernel::new(config)?;
        let mut node =
            Self { kernel, ops: VecDeque::new(), replies: Vec::new(), events: Vec::new(), next_command: 0 };
        node.drain();
        Ok(node)
    }

    /// Passes a command; its reply appears in [`StepNode::take_reply`] once
    /// given.
    pub fn command(&mut self, clock: &VirtualClock, command: Command) -> CommandId {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        self.kernel.handle_input(clock.now(), Input::Command { id, command });
        self.drain();
        id
    }

    /// The next disk operation, if any, without executing it.
    pub fn next_op(&self) -> Option<&DiskOp> {
        self.ops.front()
    }

    /// Executes the next disk operation on `disk`, feeds its completion
    /// back, and returns the operation with its result.
    pub fn execute_one(
        &mut self,
        clock: &mut VirtualClock,
        disk: &mut SimDisk,
        rng: &mut impl Rng,
    ) -> Option<(DiskOp, Result<DiskDone, DiskFailure>)> {
        let op = self.ops.pop_front()?;
        clock.advance_by(STEP_OP_DURATION);
        let result = disk.execute(&op, rng);
        let completion = DiskCompletion { io: op.io(), result: result.clone() };
        self.kernel.handle_input(clock.now(), Input::Disk(completion));
        self.drain();
        Some((op, result))
    }

    /// Executes operations until none is left; returns them with their
    /// results, in order. Bounded by `ops_max` so that a kernel that never
    /// stops asking cannot hang a test: `None` when the bound was hit.
    pub fn run(
        &mut self,
        clock: &mut VirtualClock,
        disk: &mut SimDisk,
        rng: &mut impl Rng,
        ops_max: usize,
    ) -> Option<Vec<(DiskOp, Result<DiskDone, DiskFailure>)>> {
        let mut executed = Vec::new();
        while let Some(step) = self.execute_one(clock, disk, rng) {
            executed.push(step);
            if executed.len() > ops_max {
                return None;
            }
        }
        Some(executed)
    }

    /// Removes and returns the reply to `id`, if it has been given.
    pub fn take_reply(&mut self, id: CommandId) -> Option<Reply> {
        let index = self.replies.iter().position(|(answered, _)| *answered == id)?;
        Some(self.replies.remove(index).1)
    }

    /// Every event reported so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    fn drain(&mut self) {
        while let Some(output) = self.kernel.poll_output() {
            match output {
                Output::Disk(op) => self.ops.push_back(op),
                Output::Reply { id, reply } => self.replies.push((id, reply)),
                Output::Event(event) => self.events.push(event),
                other => unreachable!("a standalone log has no network: {other:?}"),
            }
        }
    }
}
