//! Virtual time: a run's clock is one real epoch plus a virtual offset, and
//! the event queue that advances it.
//!
//! The core only ever compares the `Instant`s it is given, so any epoch
//! works; taking it once per process keeps the real clock out of every run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The one real instant every virtual clock of this process counts from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // The only reading of the real clock in the simulator: a base for
    // virtual instants, never a source of timing decisions.
    #[allow(clippy::disallowed_methods)]
    *EPOCH.get_or_init(Instant::now)
}

/// A clock that moves only when told to.
#[derive(Clone, Debug)]
pub struct VirtualClock {
    epoch: Instant,
    elapsed: Duration,
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtualClock {
    /// A clock at virtual time zero.
    pub fn new() -> Self {
        Self { epoch: epoch(), elapsed: Duration::ZERO }
    }

    /// The current virtual instant, to pass to the core as `now`.
    pub fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    /// Virtual time since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Converts an instant the core handed out (a deadline) back to virtual
    /// time; instants before the epoch map to zero.
    pub fn offset_of(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.epoch)
    }

    /// Moves the clock forward to `at`. Time never goes back: an earlier
    /// `at` leaves the clock where it is.
    pub fn advance_to(&mut self, at: Duration) {
        self.elapsed = self.elapsed.max(at);
    }

    /// Moves the clock forward by `step`.
    pub fn advance_by(&mut self, step: Duration) {
        self.elapsed = self.elapsed.saturating_add(step);
    }
}

/// Events ordered by (virtual time, insertion number): two events due at
/// the same instant leave in the order they were scheduled, so a run never
/// depends on anything but its seed.
#[derive(Debug)]
pub struct EventQueue<E> {
    /// A binary heap rather than an ordered map: the run only ever needs
    /// the earliest event, and the keys are unique, so the order is the
    /// same and each push or pop moves a few entries instead of a node.
    events: BinaryHeap<Scheduled<E>>,
    next_seq: u64,
}

/// One event in the queue, ordered so that the heap's greatest is the
/// earliest `(at, seq)`.
#[derive(Debug)]
struct Scheduled<E> {
    at: Duration,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` pops its greatest element.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub fn new() -> Self {
        Self { events: BinaryHeap::new(), next_seq: 0 }
    }

    /// Schedules `event` at virtual time `at`.
    pub fn push(&mut self, at: Duration, event: E) {
        self.events.push(Scheduled { at, seq: self.next_seq, event });
        self.next_seq += 1;
    }

    /// Removes and returns the earliest event with its time.
    pub fn pop(&mut self) -> Option<(Duration, E)> {
        self.events.pop().map(|scheduled| (scheduled.at, scheduled.event))
    }

    /// The time of the earliest event, without removing it.
    pub fn next_at(&self) -> Option<Duration> {
        self.events.peek().map(|scheduled| scheduled.at)
    }

    /// Number of scheduled events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}
