//! Shutdown in one place: [`Shutdown`] is the value every listener and
//! connection holds, and [`Coordinator`] is the server's side of it.
//!
//! A graceful shutdown has three stages, all carried by one value (as in
//! tokio's `graceful-shutdown.rs` and mini-redis's `Shutdown`):
//! - *drain*: listeners stop accepting; each connection echoes what it has
//!   received, sends FIN and closes;
//! - *linger*: a connection that owes its client nothing more but waits for
//!   it to close counts as lingering, so it is not reported as cut;
//! - *cut*: at the grace deadline (or a second signal) whatever is still
//!   open is dropped.
//!
//! Connections are spawned through the coordinator, whose [`TaskTracker`]
//! tells when every one has ended.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFuture},
    task::TaskTracker,
};
use tracing::warn;

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open at the grace deadline, which were cut.
    pub cut: usize,
}

/// What one task needs to know of the server's shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown {
    drain: CancellationToken,
    cut: CancellationToken,
    lingering: Arc<AtomicUsize>,
}

impl Shutdown {
    /// True once the graceful shutdown has begun. One atomic load: cheap
    /// enough for every turn of a loop.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when the graceful shutdown begins.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.drain.cancelled()
    }

    /// Resolves when what is still open must be dropped.
    pub fn cut(&self) -> WaitForCancellationFuture<'_> {
        self.cut.cancelled()
    }

    /// Counts this task as lingering (owing its client nothing more) for
    /// as long as the guard lives.
    pub fn linger(&self) -> Lingering {
        self.lingering.fetch_add(1, Ordering::Relaxed);
        Lingering(self.lingering.clone())
    }

    /// The value for one more task. Its own child token means that waiting
    /// on it locks only that task's state, not one lock shared by every
    /// connection.
    pub fn for_task(&self) -> Shutdown {
        Shutdown {
            drain: self.drain.child_token(),
            cut: self.cut.clone(),
            lingering: self.lingering.clone(),
        }
    }
}

/// A task counted as lingering while alive.
#[derive(Debug)]
pub struct Lingering(Arc<AtomicUsize>);

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's side: starts each stage, spawns and counts connections.
#[derive(Debug, Default)]
pub struct Coordinator {
    root: Shutdown,
    tasks: TaskTracker,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain: CancellationToken::new(),
            cut: CancellationToken::new(),
            lingering: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Coordinator {
    pub fn new() -> Coordinator {
        Coordinator::default()
    }

    /// The shutdown value for a listener or a connection.
    pub fn shutdown(&self) -> Shutdown {
        self.root.for_task()
    }

    /// Runs `task` as a connection the shutdown waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Connections still running.
    pub fn open(&self) -> usize {
        self.tasks.len()
    }

    /// Starts the graceful shutdown: listeners close, connections finish.
    pub fn drain(&self) {
        self.root.drain.cancel();
    }

    /// After [`drain`](Self::drain): waits for every connection to finish;
    /// cuts what is still open at `grace`, or at once when `cut_now`
    /// resolves first (a second signal), and reports how many were cut.
    pub async fn finish<S: std::fmt::Display>(
        &self,
        grace: Duration,
        cut_now: impl Future<Output = S>,
    ) -> ShutdownReport {
        self.tasks.close();
        let why = tokio::select! {
            biased;
            () = self.tasks.wait() => return ShutdownReport { cut: 0 },
            () = tokio::time::sleep(grace) => {
                format!("still open at the {:.1}s shutdown deadline", grace.as_secs_f64())
            }
            cause = cut_now => format!("still open at a second {cause}"),
        };
        let lingering = self.root.lingering.load(Ordering::Relaxed);
        let report = ShutdownReport {
            cut: self.tasks.len().saturating_sub(lingering),
        };
        if report.cut > 0 {
            warn!(
                connections = report.cut,
                "{} connection(s) {why} were cut", report.cut
            );
        }
        self.root.cut.cancel();
        self.tasks.wait().await;
        report
    }
}
