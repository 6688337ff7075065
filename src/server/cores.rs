//! Per-core runtimes (`runtime = "per-core"`): the main thread's
//! current-thread runtime is core 0, and each further core is a thread
//! with its own current-thread runtime. Every TCP listener gets one
//! `SO_REUSEPORT` socket per core, so the kernel spreads connections and a
//! connection lives and dies on the thread that accepted it: no work
//! stealing, no cross-thread wake-ups on the echo path — the shape nginx,
//! Envoy and Seastar use for tail latency.
//!
//! What must stay exact stays global: the admission gate (connection
//! permits, per-IP slots), the metrics, the live settings and the shutdown
//! coordinator are shared by every core.

use std::{io, thread::JoinHandle};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The cores beyond the main thread; dropping this stops and joins them.
pub struct Cores {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Cores {
    /// Starts `extra` threads, each running its own current-thread runtime
    /// until [`Cores`] is dropped. A runtime is built here, on the caller's
    /// thread, so a failure is a start-up error.
    pub fn start(extra: usize) -> io::Result<Cores> {
        let mut cores = Cores {
            handles: Vec::with_capacity(extra),
            threads: Vec::with_capacity(extra),
            stop: CancellationToken::new(),
        };
        for core in 1..=extra {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            cores.handles.push(runtime.handle().clone());
            let stop = cores.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("echod-core-{core}"))
                .spawn(move || runtime.block_on(stop.cancelled_owned()))?;
            cores.threads.push(thread);
        }
        Ok(cores)
    }

    /// The runtimes of the cores beyond the main thread.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Cores {
    /// Called once the server has shut down (every connection has ended):
    /// each core's runtime returns and is dropped on its own thread.
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
