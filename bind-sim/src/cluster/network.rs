//! The simulated network between nodes: per-message delay, loss,
//! duplication and reordering drawn from the run's generator, and directed
//! link cuts from which partitions are built.
//!
//! Raft messages are datagrams here (the real transport is QUIC; Raft only
//! needs best-effort delivery, and retries by itself). A message is checked
//! against the cuts both when it is sent and when it arrives, so a
//! partition that starts while it is in flight drops it too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;

/// How the network behaves. `Default`: 100 µs to 2 ms of delay, nothing
/// lost, duplicated or held back, datagrams of up to 1500 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkConfig {
    /// Shortest one-way delay.
    pub delay_min: Duration,
    /// Longest one-way delay (uniform between the two); unequal delays
    /// already reorder messages.
    pub delay_max: Duration,
    /// Chance that a message is lost, in `0.0..=1.0`.
    pub drop: f64,
    /// Chance that a message is delivered twice (the copy with its own
    /// delay), in `0.0..=1.0`.
    pub duplicate: f64,
    /// Chance that a message is held back by up to `reorder_delay_max` more,
    /// so that later ones overtake it, in `0.0..=1.0`.
    pub reorder: f64,
    /// Longest extra delay of a held-back message.
    pub reorder_delay_max: Duration,
    /// Largest datagram (UDP payload) carried when nodes talk QUIC; larger
    /// ones are lost, as on a real path, so QUIC's MTU discovery loses its
    /// probes above it. Raft messages handed over whole (without QUIC) are
    /// not limited.
    pub path_mtu: usize,
}

impl NetworkConfig {
    /// A network that delivers everything after a fixed delay.
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            delay_min: delay,
            delay_max: delay,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay_max: Duration::ZERO,
            path_mtu: ETHERNET_MTU,
        }
    }

    /// Checks that probabilities are in range and delays ordered.
    ///
    /// # Errors
    ///
    /// The first bad field's name.
    pub fn validate(&self) -> Result<(), &'static str> {
        for (name, value) in [("drop", self.drop), ("duplicate", self.duplicate), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(name);
            }
        }
        if self.delay_min > self.delay_max {
            return Err("delay_min");
        }
        Ok(())
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_millis(2),
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay_max: Duration::from_millis(20),
            path_mtu: ETHERNET_MTU,
        }
    }
}

/// The largest UDP payload of an Ethernet frame, about (1500 bytes less
/// IPv4 and UDP headers is 1472; QUIC's probes step by 20 bytes or more).
const ETHERNET_MTU: usize = 1500;

/// What the network did with messages, counted since the run started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkCounts {
    /// Messages the nodes sent.
    pub sent: u64,
    /// Messages delivered (copies included).
    pub delivered: u64,
    /// Messages lost at random.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages held back to be overtaken.
    pub reordered: u64,
    /// Messages lost to a cut link (a partition).
    pub cut: u64,
    /// Messages lost to a targeted loss ([`crate::cluster::ClusterSim::lose_messages`]).
    pub targeted: u64,
    /// Messages to a node that was down or unknown when they arrived.
    pub undeliverable: u64,
    /// Datagrams larger than [`NetworkConfig::path_mtu`], lost.
    pub oversized: u64,
}

/// Most copies of one message the network delivers (the original and a
/// duplicate).
const COPIES_MAX: usize = 2;

/// Where one message goes: the delays of its copies, without allocating
/// (a run routes millions of messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    delays: [Duration; COPIES_MAX],
    copies: usize,
}

impl Route {
    /// A message that is lost: no copy arrives.
    const LOST: Self = Self { delays: [Duration::ZERO; COPIES_MAX], copies: 0 };

    /// The delay of each copy that arrives, in the order they were drawn.
    pub(crate) fn delays(&self) -> &[Duration] {
        &self.delays[..self.copies]
    }
}

/// The network: its config, the cut links and the counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Network {
    pub(crate) config: NetworkConfig,
    /// Directed links `(from, to)` that lose everything.
    cut: BTreeSet<(u64, u64)>,
    /// Targeted losses on a directed link: the next `count` messages of at
    /// least `bytes_min` bytes are lost.
    losses: BTreeMap<(u64, u64), (usize, u64)>,
    pub(crate) counts: NetworkCounts,
}

fn chance(rng: &mut impl Rng, probability: f64) -> bool {
    probability > 0.0 && rng.random_bool(probability.min(1.0))
}

impl Network {
    pub(crate) fn new(config: NetworkConfig) -> Self {
        Self { config, cut: BTreeSet::new(), losses: BTreeMap::new(), counts: NetworkCounts::default() }
    }

    /// Whether `from` can reach `to` now.
    pub(crate) fn connected(&self, from: u64, to: u64) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Cuts the directed link `from -> to`.
    pub(crate) fn cut(&mut self, from: u64, to: u64) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Restores the directed link `from -> to`.
    pub(crate) fn restore(&mut self, from: u64, to: u64) {
        self.cut.remove(&(from, to));
    }

    /// Restores every link.
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Loses the next `count` messages `from -> to` of at least `bytes_min`
    /// bytes (replacing any earlier such loss on that link).
    pub(crate) fn lose(&mut self, from: u64, to: u64, bytes_min: usize, count: u64) {
        self.losses.insert((from, to), (bytes_min, count));
    }

    /// Whether any link is cut.
    pub(crate) fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    /// As [`Network::route`], for a datagram: one larger than the path's
    /// MTU is lost.
    pub(crate) fn route_datagram(&mut self, rng: &mut impl Rng, from: u64, to: u64, bytes: usize) -> Route {
        if bytes > self.config.path_mtu {
            self.counts.sent += 1;
            self.counts.oversized += 1;
            return Route::LOST;
        }
        self.route(rng, from, to, bytes)
    }

    /// The delays after which copies of a message sent now arrive; none
    /// when it is lost.
    pub(crate) fn route(&mut self, rng: &mut impl Rng, from: u64, to: u64, bytes: usize) -> Route {
        self.counts.sent += 1;
        if !self.connected(from, to) {
            self.counts.cut += 1;
            return Route::LOST;
        }
        if let Some((bytes_min, count)) = self.losses.get_mut(&(from, to))
            && bytes >= *bytes_min
        {
            *count -= 1;
            if *count == 0 {
                self.losses.remove(&(from, to));
            }
            self.counts.targeted += 1;
            return Route::LOST;
        }
        if chance(rng, self.config.drop) {
            self.counts.dropped += 1;
            return Route::LOST;
        }
        let copies = if chance(rng, self.config.duplicate) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        let mut route = Route::LOST;
        for copy in 0..copies {
            route.delays[copy] = self.delay(rng);
        }
        route.copies = copies;
        route
    }

    fn delay(&mut self, rng: &mut impl Rng) -> Duration {
        let (min, max) = (self.config.delay_min, self.config.delay_max);
        let mut delay = if max > min { rng.random_range(min..=max) } else { min };
        if chance(rng, self.config.reorder) && !self.config.reorder_delay_max.is_zero() {
            self.counts.reordered += 1;
            delay += rng.random_range(Duration::ZERO..=self.config.reorder_delay_max);
        }
        delay
    }
}
