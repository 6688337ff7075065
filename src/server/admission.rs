//! Admission: whether an accepted connection may be served, as one guard.
//!
//! An [`Admission`] holds everything a connection takes from the server:
//! its place in the open-connections gauge, its per-IP slot, and its
//! connection permit. All three are given back when the guard drops, so a
//! connection task that ends in any way — an error, a cut, even a panic —
//! cannot leak a slot or leave the gauge high.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use super::{listen::ListenerKind, metrics::Metrics, reason::Rejection};

/// The limits every connection passes: `max_connections` and
/// `max_connections_per_ip`.
pub struct Gate {
    permits: Arc<Semaphore>,
    /// Connections one IP may hold; 0 = no limit. Changes on reload.
    max_per_ip: AtomicUsize,
    /// Open connections per client IP.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Per-IP refusals, logged at most once per interval.
    rejections: Mutex<RejectionLog>,
    metrics: Option<Arc<Metrics>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Gate {
    pub fn new(max_connections: usize, max_per_ip: usize, metrics: Option<Arc<Metrics>>) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max_connections)),
            max_per_ip: AtomicUsize::new(max_per_ip),
            per_ip: Mutex::new(HashMap::new()),
            rejections: Mutex::new(RejectionLog::new()),
            metrics,
        }
    }

    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// The metrics, to keep past a borrow (an HTTP connection's requests).
    pub fn metrics_handle(&self) -> Option<Arc<Metrics>> {
        self.metrics.clone()
    }

    /// Applies a reloaded `max_connections_per_ip` to new connections.
    pub fn set_max_per_ip(&self, max: usize) {
        self.max_per_ip.store(max, Ordering::Relaxed);
    }

    /// Whether `ip` holds its `max_connections_per_ip` already (never with
    /// no limit). A hint for QUIC's Retry; the claim decides.
    pub fn ip_is_full(&self, ip: IpAddr) -> bool {
        let max = self.max_per_ip.load(Ordering::Relaxed);
        max != 0 && lock(&self.per_ip).get(&ip).is_some_and(|open| *open >= max)
    }

    /// A connection was accepted: it counts as open from now until its
    /// guard drops.
    pub fn arrive(self: &Arc<Self>, kind: ListenerKind) -> Admission {
        if let Some(metrics) = &self.metrics {
            metrics.accepted(kind);
        }
        Admission {
            gate: self.clone(),
            permit: None,
            ip: None,
        }
    }
}

/// A client IP already holds its `max_connections_per_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit;

/// One connection's claim on the server's limits; see the module docs.
pub struct Admission {
    gate: Arc<Gate>,
    permit: Option<OwnedSemaphorePermit>,
    /// The IP whose per-IP slot this connection holds.
    ip: Option<IpAddr>,
}

impl Admission {
    /// Takes a per-IP slot for `ip` (giving back one held for another IP,
    /// as when a PROXY header names the real client). `Err` when `ip`
    /// holds its limit already: the refusal is logged and counted, and the
    /// caller closes the connection. No limit, or no IP: `Ok`.
    pub fn claim_ip(&mut self, ip: Option<IpAddr>, peer: &str) -> Result<(), OverLimit> {
        self.release_ip();
        let Some(ip) = ip else {
            return Ok(());
        };
        // Counted even with no limit set, so that a limit a reload turns
        // on also bounds what an address already holds.
        let max = self.gate.max_per_ip.load(Ordering::Relaxed);
        let mut per_ip = lock(&self.gate.per_ip);
        let open = per_ip.entry(ip).or_insert(0);
        if max == 0 || *open < max {
            *open += 1;
            self.ip = Some(ip);
            return Ok(());
        }
        drop(per_ip);
        debug!(%peer, "refused: over the per-IP connection limit");
        lock(&self.gate.rejections).reject(max);
        self.reject(Rejection::PerIpLimit);
        Err(OverLimit)
    }

    /// Waits for a connection permit (`max_connections`); `None` once the
    /// server's semaphore is closed.
    pub async fn permit(&mut self) -> Option<()> {
        let permit = self.gate.permits.clone().acquire_owned().await.ok()?;
        self.permit = Some(permit);
        Some(())
    }

    /// The server's metrics, when they are on.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.gate.metrics()
    }

    /// Counts why the connection is refused before its echo began.
    pub fn reject(&self, why: Rejection) {
        if let Some(metrics) = &self.gate.metrics {
            metrics.rejected(why);
        }
    }

    fn release_ip(&mut self) {
        let Some(ip) = self.ip.take() else { return };
        let mut per_ip = lock(&self.gate.per_ip);
        if let Some(open) = per_ip.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release_ip();
        if let Some(metrics) = &self.gate.metrics {
            metrics.departed();
        }
    }
}

/// Counts rejections and logs them at most once per interval, so an attack
/// cannot flood the log.
#[derive(Debug)]
struct RejectionLog {
    count: u64,
    since: Instant,
}

impl RejectionLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn new() -> RejectionLog {
        RejectionLog {
            count: 0,
            since: Instant::now(),
        }
    }

    fn reject(&mut self, limit: usize) {
        self.count += 1;
        if self.since.elapsed() >= Self::INTERVAL {
            info!(
                rejected = self.count,
                "refused {} connection(s) over the {limit}-per-IP limit in the last {}s",
                self.count,
                self.since.elapsed().as_secs()
            );
            self.count = 0;
            self.since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_gives_back_its_permit_slot_and_gauge() {
        let metrics = Arc::new(Metrics::new(false, false));
        let gate = Arc::new(Gate::new(1, 1, Some(metrics.clone())));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut admission = gate.arrive(ListenerKind::Tcp);
        admission.claim_ip(Some(ip), "192.0.2.1:1").unwrap();
        admission.permit().await.unwrap();
        assert!(metrics.render().contains("echod_connections_open 1"));
        let task = tokio::spawn(async move {
            let _admission = admission;
            panic!("a bug in a connection task");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(metrics.render().contains("echod_connections_open 0"));
        assert!(lock(&gate.per_ip).is_empty(), "the per-IP slot leaked");
        assert_eq!(gate.permits.available_permits(), 1, "the permit leaked");
        // And the next connection from that IP is admitted.
        let mut next = gate.arrive(ListenerKind::Tcp);
        assert!(next.claim_ip(Some(ip), "192.0.2.1:2").is_ok());
    }
}
