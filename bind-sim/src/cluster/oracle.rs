//! The cluster's oracles: what every run is checked against, event by event.
//!
//! - **Agreement**: the first replica to apply a command at a position
//!   (see [`super::recorder`]) defines the cluster's committed sequence;
//!   every other application at that position, by any node in any
//!   incarnation, must be the same command with the same result, and every
//!   restored snapshot must carry the sequence's checksum at its position.
//!   Two states recorded at one position (snapshots taken or restored) must
//!   be byte-identical.
//! - **Election safety**: at most one leader per term, whether a node claims
//!   leadership or names the leader it follows.
//! - **Real-time order**: an acknowledged proposal sits after every
//!   proposal acknowledged before it was submitted; a linearizable read of a
//!   key sees every write to that key acknowledged before the read started,
//!   and nothing older than a read of it that finished before it started
//!   (a single-register check per key, keyed on positions in the sequence).
//!
//! Durability and progress are checked at the end of a run, against the
//! same sequence (see `ClusterSim::check_converged`).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::recorder::{Record, chain_next};

/// What the key-value state machine answers for a missing key.
const NOT_FOUND: &[u8] = b"NOT_FOUND";

/// One command of the committed sequence.
#[derive(Clone, Debug)]
struct Committed {
    command: Bytes,
    result: Result<Bytes, String>,
    /// Chain checksum after this command.
    chain: u32,
    /// The node that applied it first, for reports.
    first_node: u64,
}

/// The key a key-value command writes, if it is a write that succeeded.
pub(crate) fn written_key<'a>(command: &'a [u8], result: &Result<Bytes, String>) -> Option<&'a [u8]> {
    if result.is_err() {
        return None;
    }
    let rest = command.strip_prefix(b"SET ").or_else(|| command.strip_prefix(b"DELETE "))?;
    let key = rest.split(|&byte| byte == b' ').next().unwrap_or(rest);
    (!key.is_empty()).then_some(key)
}

/// Text for reports: commands are short and mostly ASCII.
pub(crate) fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.chars().count() {
        0..=80 => format!("{text:?}"),
        _ => format!("{:?}... ({} bytes)", text.chars().take(80).collect::<String>(), bytes.len()),
    }
}

/// The oracles' state. Each check returns the violation's text.
#[derive(Debug, Default)]
pub(crate) struct Oracle {
    canonical: Vec<Committed>,
    /// State checksum recorded at a position, and the node that recorded it.
    states: BTreeMap<u64, (u32, u64)>,
    /// The leader of each term.
    leaders: BTreeMap<u64, u64>,
    /// Highest position of an acknowledged proposal.
    acked_position_max: u64,
    /// Positions of the successful writes to each key, ascending.
    key_writes: BTreeMap<Bytes, Vec<u64>>,
    /// The oldest write to each key a read starting now may return.
    key_floors: BTreeMap<Bytes, u64>,
}

impl Oracle {
    /// Length of the committed sequence seen so far.
    pub(crate) fn len(&self) -> u64 {
        self.canonical.len() as u64
    }

    /// The committed command at `position` (1-based).
    pub(crate) fn command_at(&self, position: u64) -> Option<&Bytes> {
        let index = usize::try_from(position.checked_sub(1)?).ok()?;
        self.canonical.get(index).map(|committed| &committed.command)
    }

    /// The committed commands and results, in order.
    pub(crate) fn sequence(&self) -> impl Iterator<Item = (&Bytes, &Result<Bytes, String>)> {
        self.canonical.iter().map(|committed| (&committed.command, &committed.result))
    }

    /// Terms in which some node led.
    pub(crate) fn leader_terms(&self) -> u64 {
        self.leaders.len() as u64
    }

    fn chain_at(&self, position: u64) -> Option<u32> {
        match position {
            0 => Some(0),
            _ => self.canonical.get(usize::try_from(position - 1).ok()?).map(|committed| committed.chain),
        }
    }

    /// Checks one record of node `node`.
    pub(crate) fn on_record(&mut self, node: u64, record: &Record) -> Result<(), String> {
        match record {
            Record::Applied { position, command, result } => {
                self.on_applied(node, *position, command, result)
            }
            Record::Queried { .. } => Ok(()),
            Record::Snapshot { position, chain, state_crc } => {
                self.check_chain(node, "took a snapshot", *position, *chain)?;
                self.check_state(node, *position, *state_crc)
            }
            Record::Restored { position, chain, state_crc } => {
                self.check_chain(node, "restored a snapshot", *position, *chain)?;
                self.check_state(node, *position, *state_crc)
            }
        }
    }

    fn on_applied(
        &mut self,
        node: u64,
        position: u64,
        command: &Bytes,
        result: &Result<Bytes, String>,
    ) -> Result<(), String> {
        let len = self.len();
        if position == 0 || position > len + 1 {
            return Err(format!(
                "node {node} applied {} at position {position}, but the committed sequence has only {len} \
                 commands",
                show(command)
            ));
        }
        if position <= len {
            let committed = &self.canonical[(position - 1) as usize];
            if committed.command != *command || committed.result != *result {
                return Err(format!(
                    "replicas disagree at position {position}: node {node} applied {} -> {result:?}, node {} \
                     applied {} -> {:?}",
                    show(command),
                    committed.first_node,
                    show(&committed.command),
                    committed.result
                ));
            }
            return Ok(());
        }
        let chain = chain_next(self.chain_at(len).unwrap_or(0), command, result);
        if let Some(key) = written_key(command, result) {
            // Most writes go to a key written before: look it up before
            // copying it.
            match self.key_writes.get_mut(key) {
                Some(writes) => writes.push(position),
                None => {
                    self.key_writes.insert(Bytes::copy_from_slice(key), vec![position]);
                }
            }
        }
        self.canonical.push(Committed {
            command: command.clone(),
            result: result.clone(),
            chain,
            first_node: node,
        });
        Ok(())
    }

    fn check_chain(&self, node: u64, what: &str, position: u64, chain: u32) -> Result<(), String> {
        match self.chain_at(position) {
            Some(expected) if expected == chain => Ok(()),
            Some(expected) => Err(format!(
                "node {node} {what} at position {position} with history checksum {chain:08x}, but the \
                 committed sequence's is {expected:08x}"
            )),
            None => Err(format!(
                "node {node} {what} at position {position}, beyond the {} committed commands",
                self.len()
            )),
        }
    }

    fn check_state(&mut self, node: u64, position: u64, state_crc: u32) -> Result<(), String> {
        match self.states.get(&position) {
            Some(&(crc, other)) if crc != state_crc => Err(format!(
                "replicas' states differ at position {position}: node {node} has state {state_crc:08x}, node \
                 {other} had {crc:08x}"
            )),
            Some(_) => Ok(()),
            None => {
                self.states.insert(position, (state_crc, node));
                Ok(())
            }
        }
    }

    /// Checks a role change: at most one leader per term.
    pub(crate) fn on_role(
        &mut self,
        node: u64,
        term: u64,
        leader: bool,
        leader_id: Option<u64>,
    ) -> Result<(), String> {
        let claimed = if leader { Some(node) } else { leader_id };
        let Some(claimed) = claimed else { return Ok(()) };
        match self.leaders.get(&term) {
            Some(&known) if known != claimed => {
                let how = if leader { "claims to lead" } else { "follows" };
                Err(format!(
                    "two leaders in term {term}: node {node} {how} {claimed}, but node {known} led that term"
                ))
            }
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, claimed);
                Ok(())
            }
        }
    }

    /// The floor a proposal submitted now must land above.
    pub(crate) fn proposal_floor(&self) -> u64 {
        self.acked_position_max
    }

    /// Checks an acknowledged proposal applied at `position`.
    pub(crate) fn on_acked(&mut self, position: u64, floor: u64, command: &Bytes) -> Result<(), String> {
        if position <= floor {
            return Err(format!(
                "proposal {} was acknowledged at position {position}, not after position {floor} of a \
                 proposal acknowledged before it was submitted",
                show(command)
            ));
        }
        self.acked_position_max = self.acked_position_max.max(position);
        let result = self.canonical.get((position - 1) as usize).map(|committed| &committed.result);
        if let Some(key) = result.and_then(|result| written_key(command, result)) {
            match self.key_floors.get_mut(key) {
                Some(floor) => *floor = (*floor).max(position),
                None => {
                    self.key_floors.insert(Bytes::copy_from_slice(key), position);
                }
            }
        }
        Ok(())
    }

    /// The floor a linearizable read of `key` starting now must reach.
    pub(crate) fn read_floor(&self, key: &[u8]) -> u64 {
        self.key_floors.get(key).copied().unwrap_or(0)
    }

    /// Position of the last successful write to `key` at or before `position`.
    fn last_write(&self, key: &[u8], position: u64) -> u64 {
        let Some(writes) = self.key_writes.get(key) else { return 0 };
        let count = writes.partition_point(|&write| write <= position);
        count.checked_sub(1).map_or(0, |index| writes[index])
    }

    /// What `GET key` answers in the state at `position`.
    fn value_at(&self, key: &[u8], position: u64) -> Bytes {
        let write = self.last_write(key, position);
        let Some(command) = self.command_at(write) else { return Bytes::from_static(NOT_FOUND) };
        match command.strip_prefix(b"SET ") {
            Some(rest) => {
                let value_start = (key.len() + 1).min(rest.len());
                Bytes::copy_from_slice(&rest[value_start..])
            }
            None => Bytes::from_static(NOT_FOUND),
        }
    }

    /// Checks a linearizable read of `key` that started with `floor` and saw
    /// the state at `position`, answering `result`.
    pub(crate) fn on_read(
        &mut self,
        key: &[u8],
        floor: u64,
        position: u64,
        result: &Result<Bytes, String>,
    ) -> Result<(), String> {
        let seen = self.last_write(key, position);
        if position < floor {
            return Err(format!(
                "stale read of {}: it saw the state at position {position} (last write at {seen}), but a \
                 write or read at position {floor} finished before it started",
                show(key)
            ));
        }
        let expected = self.value_at(key, position);
        if result.as_ref() != Ok(&expected) {
            return Err(format!(
                "read of {} at position {position} answered {result:?}, the committed sequence says {}",
                show(key),
                show(&expected)
            ));
        }
        let key_floor = self.key_floors.entry(Bytes::copy_from_slice(key)).or_default();
        *key_floor = (*key_floor).max(seen);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(position: u64, command: &'static str) -> Record {
        Record::Applied {
            position,
            command: Bytes::from_static(command.as_bytes()),
            result: Ok(Bytes::from_static(b"OK")),
        }
    }

    #[test]
    fn replicas_must_agree_position_by_position() {
        let mut oracle = Oracle::default();
        assert!(oracle.on_record(1, &applied(1, "SET a 1")).is_ok());
        assert!(oracle.on_record(2, &applied(1, "SET a 1")).is_ok());
        assert!(oracle.on_record(2, &applied(2, "SET a 2")).is_ok());
        let error = oracle.on_record(1, &applied(2, "SET a 3")).unwrap_err();
        assert!(error.contains("disagree at position 2"), "{error}");
        assert!(oracle.on_record(3, &applied(4, "SET a 4")).is_err(), "a gap in the sequence");
    }

    #[test]
    fn one_leader_per_term() {
        let mut oracle = Oracle::default();
        assert!(oracle.on_role(1, 3, true, Some(1)).is_ok());
        assert!(oracle.on_role(2, 3, false, Some(1)).is_ok());
        assert!(oracle.on_role(2, 3, false, None).is_ok());
        assert!(oracle.on_role(3, 3, true, Some(3)).is_err());
        assert!(oracle.on_role(3, 4, true, Some(3)).is_ok());
    }

    #[test]
    fn reads_see_acknowledged_writes() {
        let mut oracle = Oracle::default();
        for (position, command) in [(1, "SET k v1"), (2, "SET x y"), (3, "SET k v2")] {
            oracle.on_record(1, &applied(position, command)).unwrap();
        }
        oracle.on_acked(3, 0, &Bytes::from_static(b"SET k v2")).unwrap();
        let floor = oracle.read_floor(b"k");
        assert_eq!(floor, 3);
        let stale = oracle.on_read(b"k", floor, 2, &Ok(Bytes::from_static(b"v1")));
        assert!(stale.unwrap_err().contains("stale read"));
        assert!(oracle.on_read(b"k", floor, 3, &Ok(Bytes::from_static(b"v2"))).is_ok());
        let wrong = oracle.on_read(b"k", floor, 3, &Ok(Bytes::from_static(b"v1")));
        assert!(wrong.is_err());
        assert!(oracle.on_acked(2, 3, &Bytes::from_static(b"SET x y")).is_err(), "acknowledged out of order");
        assert_eq!(oracle.value_at(b"missing", 3), Bytes::from_static(NOT_FOUND));
    }
}
