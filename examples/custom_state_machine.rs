//! A state machine of your own behind a replicated node: a small inventory
//! that refuses to hand out stock it does not have.
//!
//! The node is a cluster of one (it is its own majority), so the example
//! needs no peers, but every command still goes through the write-ahead
//! log and Raft exactly as in a larger cluster. The program proposes
//! commands, reads, shows a refused command, shuts the node down, opens it
//! again on the same directory and checks that the state came back: from
//! the last snapshot, then the log entries after it.
//!
//! ```sh
//! cargo run -p octopii-examples --example custom_state_machine
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use octopii::{Config, OctopiiError, OctopiiNode, OctopiiRuntime, StateMachineTrait};

/// Entries applied between snapshots. Low, so that this short run takes a
/// few and the restart starts from one (the default is 1000).
const SNAPSHOT_LAG_THRESHOLD: u64 = 20;
/// Deliveries proposed before the restart.
const DELIVERIES: u64 = 50;

/// Stock per item, driven by text commands:
///
/// - `ADD <item> <count>` adds stock and answers the new level;
/// - `TAKE <item> <count>` removes stock, or is refused if there is not
///   enough (the refusal is the command's result: it is in the log and
///   every replica refuses it the same way);
/// - `COUNT <item>` answers the level and changes nothing.
///
/// `apply` must be deterministic: every replica applies the same commands
/// in the same order and must reach the same state.
#[derive(Debug, Default)]
struct Inventory {
    stock: Mutex<BTreeMap<String, u64>>,
    /// For the demonstration only: how this instance got its state.
    snapshots_restored: AtomicU64,
    /// Mutating commands applied (refused ones included).
    commands_applied: AtomicU64,
}

impl Inventory {
    fn stock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        // Every update is one insert, made after all checks: a panic
        // elsewhere cannot leave the map half-changed.
        self.stock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Splits `VERB item [count]`.
fn parse(command: &[u8]) -> Result<(&str, &str, Option<u64>), String> {
    let text = std::str::from_utf8(command).map_err(|_| "command is not utf-8".to_owned())?;
    let mut words = text.split_whitespace();
    let (Some(verb), Some(item)) = (words.next(), words.next()) else {
        return Err(format!("expected `VERB item [count]`, got {text:?}"));
    };
    let count = words.next().map(|count| count.parse::<u64>().map_err(|_| format!("bad count {count:?}")));
    if words.next().is_some() {
        return Err(format!("too many words in {text:?}"));
    }
    Ok((verb, item, count.transpose()?))
}

impl StateMachineTrait for Inventory {
    fn apply(&self, command: &[u8]) -> Result<Bytes, String> {
        let (verb, item, count) = parse(command)?;
        // Queries (`OctopiiNode::query`) are passed to `apply` too, on this
        // replica only and without going through the log: read commands
        // must leave the state alone.
        if verb == "COUNT" {
            let level = self.stock().get(item).copied().unwrap_or(0);
            return Ok(Bytes::from(level.to_string()));
        }
        self.commands_applied.fetch_add(1, Ordering::Relaxed);
        let count = count.ok_or_else(|| format!("{verb} needs a count"))?;
        let mut stock = self.stock();
        let level = stock.get(item).copied().unwrap_or(0);
        let new_level = match verb {
            "ADD" => level.checked_add(count).ok_or("stock would overflow")?,
            "TAKE" => level.checked_sub(count).ok_or_else(|| format!("only {level} {item} left"))?,
            other => return Err(format!("unknown command {other:?}")),
        };
        stock.insert(item.to_owned(), new_level);
        Ok(Bytes::from(new_level.to_string()))
    }

    fn snapshot(&self) -> Vec<u8> {
        octopii::rpc::serialize(&*self.stock()).expect("a map of strings to integers always encodes").to_vec()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        // The bytes come from disk or from a leader: decode, never trust.
        let stock: BTreeMap<String, u64> =
            octopii::rpc::deserialize(data).map_err(|error| error.to_string())?;
        *self.stock() = stock;
        self.snapshots_restored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Opens (or reopens) node 1 on `wal_dir` with a fresh, empty inventory;
/// its state comes back from the directory.
async fn open(wal_dir: &Path, inventory: Arc<Inventory>) -> anyhow::Result<OctopiiNode> {
    let config = Config {
        node_id: 1,
        bind_addr: "127.0.0.1:0".parse()?,
        wal_dir: wal_dir.to_path_buf(),
        // Start a new cluster with this node as its only voter (ignored
        // once the log holds state).
        is_initial_leader: true,
        snapshot_lag_threshold: SNAPSHOT_LAG_THRESHOLD,
        ..Config::default()
    };
    // The node runs on the application's runtime.
    let runtime = OctopiiRuntime::from_handle(tokio::runtime::Handle::current());
    let node = OctopiiNode::new_with_state_machine(config, runtime, inventory).await?;
    // Rebuilds the state and, as the only voter, waits until it leads.
    node.start().await?;
    Ok(node)
}

async fn propose(node: &OctopiiNode, command: &str) -> anyhow::Result<String> {
    let answer = node.propose(command.as_bytes().to_vec()).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn count(node: &OctopiiNode, item: &str) -> anyhow::Result<u64> {
    // A linearizable read sees every write acknowledged before it.
    let answer = node.linearizable_query(format!("COUNT {item}").as_bytes()).await?;
    Ok(std::str::from_utf8(&answer)?.parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let wal_dir = dir.path().join("node-1");

    let started = Instant::now();
    let node = open(&wal_dir, Arc::new(Inventory::default())).await?;
    println!("node {} leads a cluster of one, listening on {}", node.id(), node.local_addr());

    println!("ADD widget 10 -> {}", propose(&node, "ADD widget 10").await?);
    println!("TAKE widget 3 -> {}", propose(&node, "TAKE widget 3").await?);
    println!("COUNT widget (query) -> {}", count(&node, "widget").await?);

    // A refused command is committed and applied like any other; its
    // result is an error, the state is unchanged, and the node goes on.
    match node.propose(b"TAKE widget 100".to_vec()).await {
        Err(OctopiiError::Rejected(reason)) => println!("TAKE widget 100 -> refused: {reason}"),
        other => anyhow::bail!("taking more than the stock must be refused, got {other:?}"),
    }
    anyhow::ensure!(count(&node, "widget").await? == 7, "a refused command changed the state");

    // Enough commands to take a couple of snapshots.
    for _ in 0..DELIVERIES {
        propose(&node, "ADD gadget 2").await?;
    }
    let before = node.status().await?;
    let (widgets, gadgets) = (count(&node, "widget").await?, count(&node, "gadget").await?);
    println!(
        "before shutdown: widget {widgets}, gadget {gadgets} (log index {}, applied {})",
        before.commit, before.applied
    );
    anyhow::ensure!((widgets, gadgets) == (7, 2 * DELIVERIES), "unexpected stock before the restart");

    // Stop the node; on a multi-threaded runtime `shutdown` returns once
    // the port and the log are released.
    node.shutdown();
    drop(node);
    println!("shut down; reopening {} with an empty inventory", wal_dir.display());

    let inventory = Arc::new(Inventory::default());
    let node = open(&wal_dir, inventory.clone()).await?;
    let (widgets, gadgets) = (count(&node, "widget").await?, count(&node, "gadget").await?);
    let restored = inventory.snapshots_restored.load(Ordering::Relaxed);
    let replayed = inventory.commands_applied.load(Ordering::Relaxed);
    println!(
        "after restart: widget {widgets}, gadget {gadgets} ({restored} snapshot restored, then {replayed} of {} \
         commands replayed from the log)",
        DELIVERIES + 3
    );
    anyhow::ensure!((widgets, gadgets) == (7, 2 * DELIVERIES), "the state did not survive the restart");
    anyhow::ensure!(restored == 1, "the restart should start from the last snapshot");
    anyhow::ensure!(replayed < DELIVERIES, "the snapshot should spare replaying the whole log");

    // The reopened node keeps working.
    println!("TAKE gadget 100 -> {}", propose(&node, "TAKE gadget 100").await?);
    anyhow::ensure!(count(&node, "gadget").await? == 0, "the last TAKE was lost");
    node.shutdown();
    println!("done in {:.2?}: the inventory survived the restart", started.elapsed());
    Ok(())
}
