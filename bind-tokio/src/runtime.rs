//! The tokio runtime nodes run on.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// A tokio runtime for nodes: one Octopii owns (with its own worker
/// threads), or one the application already has. Clones share it; an
/// owned runtime stops when the last clone is dropped, and may be dropped
/// anywhere, inside an async context too (its workers are told to stop
/// and are not waited for).
#[derive(Clone, Debug)]
pub struct OctopiiRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handle: Handle,
    /// `None` for a runtime borrowed with [`OctopiiRuntime::from_handle`].
    owned: Option<Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.owned.take() {
            // Dropping a runtime blocks on its workers, which tokio refuses
            // inside an async context.
            runtime.shutdown_background();
        }
    }
}

impl OctopiiRuntime {
    /// A multi-threaded runtime of its own, with `worker_threads` workers
    /// (at least one) named `octopii-worker`.
    ///
    /// # Panics
    ///
    /// If the operating system refuses the threads.
    pub fn new(worker_threads: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("octopii-worker")
            .enable_all()
            .build()
            .expect("the operating system provides the runtime's threads");
        Self { inner: Arc::new(Inner { handle: runtime.handle().clone(), owned: Some(runtime) }) }
    }

    /// Runs nodes on an existing runtime, which the application keeps
    /// running.
    pub fn from_handle(handle: Handle) -> Self {
        Self { inner: Arc::new(Inner { handle, owned: None }) }
    }

    /// Runs `future` on the runtime.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.handle.spawn(future)
    }

    /// The runtime's handle.
    pub fn handle(&self) -> Handle {
        self.inner.handle.clone()
    }
}

impl Default for OctopiiRuntime {
    /// A runtime of its own with one worker per core, at most four.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::new(cores.min(4))
    }
}
