//! The replicated state machine interface, and the built-in key-value one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A deterministic state machine replicated by Raft.
///
/// Every replica applies the same committed commands in the same order, so
/// `apply` must depend only on the state and the command: no clock, no
/// randomness, no I/O whose result can differ between replicas. Methods take
/// `&self`; keep state behind a lock.
pub trait StateMachineTrait: Send + Sync {
    /// Applies one committed command and returns its result. An `Err` is the
    /// command's result too: it goes back to the proposer, every replica
    /// computes the same one, and the node keeps running.
    fn apply(&self, command: &[u8]) -> Result<Bytes, String>;

    /// Answers a read without going through the log (a node's `query` and
    /// `linearizable_query`, and clients' reads over RPC). It must not
    /// change the state: a change made here happens on one replica only.
    /// The default runs [`StateMachineTrait::apply`], as the original API
    /// did; override it to refuse commands that write.
    ///
    /// # Errors
    ///
    /// The query's own error result.
    fn query(&self, command: &[u8]) -> Result<Bytes, String> {
        self.apply(command)
    }

    /// The whole state, serialized, for log compaction and for catching up
    /// nodes that are far behind.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with one produced by `snapshot`.
    ///
    /// # Errors
    ///
    /// The bytes cannot be decoded.
    fn restore(&self, data: &[u8]) -> Result<(), String>;

    /// Called after a snapshot has been taken and the log behind it
    /// discarded, for housekeeping. Default: nothing.
    ///
    /// # Errors
    ///
    /// Reported as a `CompactFailed` replica event; the node keeps running.
    fn compact(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A shared handle to a state machine.
pub type StateMachine = Arc<dyn StateMachineTrait>;

/// A key-value store driven by text commands: `SET <key> <value>` answers
/// `OK`, `GET <key>` answers the value or `NOT_FOUND`, `DELETE <key>`
/// answers `OK`. Anything else is an error result.
#[derive(Debug, Default)]
pub struct KvStateMachine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl KvStateMachine {
    /// An empty store held in memory (the log and snapshots make it durable).
    pub fn in_memory() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated:
        // every update is a single insert or remove.
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Splits `command` at the first space: `(word, rest)`.
fn split_word(command: &[u8]) -> (&[u8], &[u8]) {
    match command.iter().position(|&byte| byte == b' ') {
        Some(space) => (&command[..space], &command[space + 1..]),
        None => (command, &[]),
    }
}

impl StateMachineTrait for KvStateMachine {
    fn apply(&self, command: &[u8]) -> Result<Bytes, String> {
        let (verb, rest) = split_word(command);
        match verb {
            b"SET" => {
                let (key, value) = split_word(rest);
                if key.is_empty() {
                    return Err("SET needs a key and a value".into());
                }
                let mut map = self.map();
                match map.get_mut(key) {
                    // Overwriting in place spares two allocations and frees.
                    Some(stored) => {
                        stored.clear();
                        stored.extend_from_slice(value);
                    }
                    None => {
                        map.insert(key.to_vec(), value.to_vec());
                    }
                }
                Ok(Bytes::from_static(b"OK"))
            }
            b"GET" if !rest.is_empty() => Ok(self
                .map()
                .get(rest)
                .map_or_else(|| Bytes::from_static(b"NOT_FOUND"), |value| Bytes::copy_from_slice(value))),
            b"DELETE" if !rest.is_empty() => {
                self.map().remove(rest);
                Ok(Bytes::from_static(b"OK"))
            }
            _ => Err(format!("unknown command: {}", String::from_utf8_lossy(command))),
        }
    }

    /// Only `GET` reads; `SET` and `DELETE` are refused here.
    fn query(&self, command: &[u8]) -> Result<Bytes, String> {
        match split_word(command).0 {
            b"GET" => self.apply(command),
            _ => Err(format!("not a read: {}", String::from_utf8_lossy(command))),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let map = self.map();
        let mut out = Vec::new();
        for (key, value) in map.iter() {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let mut map = BTreeMap::new();
        let mut rest = data;
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, String> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or("snapshot ends inside a length")?;
            let len = u32::from_le_bytes(*len) as usize;
            let (item, tail) = tail.split_at_checked(len).ok_or("snapshot ends inside an item")?;
            *rest = tail;
            Ok(item.to_vec())
        };
        while !rest.is_empty() {
            let key = take(&mut rest)?;
            let value = take(&mut rest)?;
            map.insert(key, value);
        }
        *self.map() = map;
        Ok(())
    }
}
