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
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
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

/// What one task needs to know of the server's shutdown: one pointer, so
/// that every connection carries it cheaply.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    state: Arc<State>,
}

/// The tokens wake waiting tasks; the flags are what every task reads
/// without a lock (a token's own `is_cancelled` takes its mutex). A flag is
/// set just before its token is cancelled, so a task that sees it unset and
/// waits is still woken.
#[derive(Debug, Default)]
struct State {
    drain: CancellationToken,
    cut: CancellationToken,
    draining: AtomicBool,
    cut_now: AtomicBool,
    lingering: AtomicUsize,
}

impl Shutdown {
    /// True once the graceful shutdown has begun. One atomic load: cheap
    /// enough for every turn of a loop.
    pub fn is_draining(&self) -> bool {
        self.state.draining.load(Ordering::Acquire)
    }

    /// True once what is still open must be dropped. One atomic load.
    pub fn is_cut(&self) -> bool {
        self.state.cut_now.load(Ordering::Acquire)
    }

    /// Resolves when the graceful shutdown begins.
    pub fn draining(&self) -> Signal<'_> {
        Signal::new(&self.state.draining, self.state.drain.cancelled())
    }

    /// Resolves when what is still open must be dropped.
    pub fn cut(&self) -> Signal<'_> {
        Signal::new(&self.state.cut_now, self.state.cut.cancelled())
    }

    /// The drain and then the cut, waited for by one future (for a task
    /// that must see both: one registration at a time, not two).
    pub fn stages(&self) -> Stages<'_> {
        Stages {
            shutdown: self,
            next: Stage::Drain,
            signal: self.draining(),
        }
    }

    /// Counts this task as lingering (owing its client nothing more) for
    /// as long as the guard lives.
    pub fn linger(&self) -> Lingering {
        self.state.lingering.fetch_add(1, Ordering::Relaxed);
        Lingering(self.state.clone())
    }
}

/// A stage of the shutdown, as [`Stages`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The graceful shutdown began: finish what arrived, then close.
    Drain,
    /// What is still open must be dropped now.
    Cut,
}

pin_project_lite::pin_project! {
    /// Resolves with [`Stage::Drain`] when the graceful shutdown begins
    /// and, polled again, with [`Stage::Cut`] (then stays resolved). Not
    /// fused: a `select!` loop polls it again after the drain.
    pub struct Stages<'a> {
        shutdown: &'a Shutdown,
        next: Stage,
        #[pin]
        signal: Signal<'a>,
    }
}

impl Future for Stages<'_> {
    type Output = Stage;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stage> {
        let mut this = self.project();
        if this.signal.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let stage = *this.next;
        if stage == Stage::Drain {
            *this.next = Stage::Cut;
            this.signal.set(this.shutdown.cut());
        }
        Poll::Ready(stage)
    }
}

pin_project_lite::pin_project! {
    /// Waits for one stage of the shutdown. Polled once, it registers the
    /// task with the token; polled again by the same task (every time the
    /// task wakes for I/O), it only loads the stage's flag: the token's
    /// own future would take a mutex on each poll.
    pub struct Signal<'a> {
        flag: &'a AtomicBool,
        registered: Option<Waker>,
        #[pin]
        wait: WaitForCancellationFuture<'a>,
    }
}

impl<'a> Signal<'a> {
    fn new(flag: &'a AtomicBool, wait: WaitForCancellationFuture<'a>) -> Self {
        Signal {
            flag,
            registered: None,
            wait,
        }
    }
}

impl Future for Signal<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if let Some(waker) = this.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        if this.wait.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task counted as lingering while alive.
#[derive(Debug)]
pub struct Lingering(Arc<State>);

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's side: starts each stage, spawns and counts connections.
#[derive(Debug, Default)]
pub struct Coordinator {
    root: Shutdown,
    tasks: TaskTracker,
}

impl Coordinator {
    pub fn new() -> Coordinator {
        Coordinator::default()
    }

    /// The shutdown value for a listener or a connection.
    pub fn shutdown(&self) -> Shutdown {
        // Every task waits on the same two tokens: a task registers with
        // one once (see [`Signal`]), so the shared lock is taken per
        // connection, not per message, and a connection costs no token
        // node of its own.
        self.root.clone()
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
        self.root.state.draining.store(true, Ordering::Release);
        self.root.state.drain.cancel();
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
        let lingering = self.root.state.lingering.load(Ordering::Relaxed);
        let report = ShutdownReport {
            cut: self.tasks.len().saturating_sub(lingering),
        };
        if report.cut > 0 {
            warn!(
                connections = report.cut,
                "{} connection(s) {why} were cut", report.cut
            );
        }
        self.root.state.cut_now.store(true, Ordering::Release);
        self.root.state.cut.cancel();
        self.tasks.wait().await;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that polls its drain signal on every wake (as the echo loop
    /// does while its input is always ready) is still woken by the drain.
    #[tokio::test]
    async fn a_signal_polled_many_times_by_one_task_still_resolves() {
        let coordinator = Coordinator::new();
        let shutdown = coordinator.shutdown();
        let (polled, mut polls) = tokio::sync::watch::channel(0u32);
        let waiter = tokio::spawn(async move {
            let signal = shutdown.draining();
            tokio::pin!(signal);
            let mut count = 0;
            loop {
                tokio::select! {
                    biased;
                    () = &mut signal => return count,
                    () = tokio::task::yield_now(), if count < 100 => {
                        count += 1;
                        polled.send_replace(count);
                    }
                }
            }
        });
        polls.wait_for(|count| *count == 100).await.unwrap();
        coordinator.drain();
        let count = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the drain did not wake a task that had polled its signal")
            .unwrap();
        assert_eq!(count, 100);
    }

    /// One future carries a task through both stages: the drain, then
    /// (polled again) the cut, which the coordinator counts.
    #[tokio::test]
    async fn stages_resolve_with_the_drain_and_then_the_cut() {
        let coordinator = Coordinator::new();
        let shutdown = coordinator.shutdown();
        let (seen, mut stages_seen) = tokio::sync::mpsc::unbounded_channel();
        coordinator.spawn(async move {
            let mut stages = std::pin::pin!(shutdown.stages());
            loop {
                let stage = stages.as_mut().await;
                seen.send(stage).unwrap();
                if stage == Stage::Cut {
                    return;
                }
            }
        });
        tokio::task::yield_now().await;
        assert!(stages_seen.try_recv().is_err(), "a stage before any began");
        coordinator.drain();
        assert_eq!(stages_seen.recv().await, Some(Stage::Drain));
        let report = coordinator
            .finish(Duration::from_millis(50), std::future::pending::<&str>())
            .await;
        assert_eq!(report.cut, 1);
        assert_eq!(stages_seen.recv().await, Some(Stage::Cut));
    }
}
