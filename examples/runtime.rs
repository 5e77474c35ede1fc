//! Where Octopii's tasks run: `OctopiiRuntime`, a tokio runtime that is
//! either Octopii's own (with its own worker threads) or the
//! application's.
//!
//! The program runs on the application's runtime (`#[tokio::main]`) and
//! shows: an owned runtime and its worker threads, clones sharing one
//! runtime, a borrowed one, the default one, owned runtimes created and
//! dropped inside async code, a node running on a runtime of its own
//! while the application calls it from another, and a node started from
//! synchronous code.
//!
//! ```sh
//! cargo run -p octopii-examples --example runtime
//! ```

use std::path::Path;
use std::time::Instant;

use octopii::{Config, OctopiiNode, OctopiiRuntime};

/// The name of the thread running the current task.
fn thread_name() -> String {
    std::thread::current().name().unwrap_or("unnamed").to_owned()
}

/// Runs `thread_name` on `runtime` and waits for it from the caller's
/// runtime (a `JoinHandle` can be awaited anywhere).
async fn thread_of(runtime: &OctopiiRuntime) -> anyhow::Result<String> {
    Ok(runtime.spawn(async { thread_name() }).await?)
}

fn node_config(root: &Path, id: u64) -> anyhow::Result<Config> {
    Ok(Config {
        node_id: id,
        bind_addr: "127.0.0.1:0".parse()?,
        wal_dir: root.join(format!("node-{id}")),
        is_initial_leader: true,
        worker_threads: 2,
        ..Config::default()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let app_thread = thread_of(&OctopiiRuntime::from_handle(tokio::runtime::Handle::current())).await?;
    println!("the application's tasks run on `{app_thread}` threads");

    // A runtime of Octopii's own: two worker threads named octopii-worker.
    let owned = OctopiiRuntime::new(2);
    let name = thread_of(&owned).await?;
    println!("OctopiiRuntime::new(2) runs tasks on `{name}`");
    anyhow::ensure!(name == "octopii-worker", "an owned runtime runs on its own threads");

    // Clones share the runtime; it stops when the last clone is dropped,
    // wherever that happens (here, inside the application's runtime).
    let clone = owned.clone();
    drop(owned);
    let name = thread_of(&clone).await?;
    println!("a clone keeps it running after the original is dropped: `{name}`");
    anyhow::ensure!(name == "octopii-worker", "the clone shares the owned runtime");
    let handle = clone.handle();
    let sum = handle.spawn(async { (1..=10).sum::<u64>() }).await?;
    println!("its handle() spawns too: 1 + ... + 10 = {sum}");
    anyhow::ensure!(sum == 55);
    drop(clone);
    println!("the last clone dropped inside #[tokio::main]: no panic, its workers were told to stop");

    // A runtime borrowed from the application: tasks run on the
    // application's threads, and dropping it stops nothing.
    let borrowed = OctopiiRuntime::from_handle(tokio::runtime::Handle::current());
    let name = thread_of(&borrowed).await?;
    println!("from_handle(Handle::current()) runs tasks on `{name}`");
    anyhow::ensure!(name == app_thread, "a borrowed runtime is the application's");
    drop(borrowed);

    // The default: one worker per core, at most four.
    let default = OctopiiRuntime::default();
    println!("OctopiiRuntime::default() runs tasks on `{}`", thread_of(&default).await?);
    drop(default);

    // Owned runtimes made and dropped inside async code, one with a task
    // that never ends: dropping does not block and does not panic.
    for _ in 0..3 {
        let runtime = OctopiiRuntime::new(1);
        runtime.spawn(std::future::pending::<()>());
        drop(runtime);
    }
    println!("three runtimes created and dropped inside async code, one task each still pending");

    // A node on a runtime of its own, called from the application's
    // runtime: its work does not compete with the application's tasks
    // for threads. The node keeps its runtime alive until it is dropped.
    let root = tempfile::tempdir()?;
    let node = OctopiiNode::new(node_config(root.path(), 1)?, OctopiiRuntime::new(2)).await?;
    node.start().await?;
    let answer = node.propose(b"SET greeting hello".to_vec()).await?;
    let value = node.query(b"GET greeting").await?;
    println!(
        "node 1 on its own runtime: SET -> {}, GET -> {}",
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&value)
    );
    anyhow::ensure!(value == "hello", "the node on its own runtime lost a write");
    node.shutdown();
    drop(node);

    // From synchronous code (no runtime on this thread), `new_blocking`
    // makes the node's runtime with `worker_threads` workers and waits on
    // the calling thread. The node can then be used from async code.
    let config = node_config(root.path(), 2)?;
    let node = std::thread::spawn(move || OctopiiNode::new_blocking(config))
        .join()
        .map_err(|_| anyhow::anyhow!("the starting thread panicked"))??;
    node.start().await?;
    node.propose(b"SET from sync".to_vec()).await?;
    let value = node.query(b"GET from").await?;
    println!(
        "node 2 started with new_blocking from a plain thread: GET from -> {}",
        String::from_utf8_lossy(&value)
    );
    anyhow::ensure!(value == "sync");
    node.shutdown();
    drop(node);

    println!("done in {:.2?}", started.elapsed());
    Ok(())
}
