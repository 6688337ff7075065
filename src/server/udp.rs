//! RFC 862 datagram echo, safe by construction.
//!
//! UDP echo is a classic reflection and amplification vector: an attacker
//! spoofs the victim's address as the source, or points two echo services
//! at each other (port 7 ↔ port 19). So:
//! - a reply is the identical datagram, never larger than the request;
//! - replies to source ports below `udp_min_source_port` (default 1024,
//!   where other services live) are dropped;
//! - a token bucket per source IP and one global bucket cap what can be
//!   reflected; a limited source gets replies again as soon as its bucket
//!   refills (no lasting ban);
//! - the table of sources is bounded, so spoofed floods cannot grow memory;
//! - drops are counted and logged once per interval, never per packet.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::{metrics::Metrics, reason::DropReason, shutdown::Shutdown};
use crate::{addr::UDP_RECEIVE_BUFFER, config::UdpLimits};

/// Sources tracked at once; beyond this, new sources get no reply until
/// idle ones are pruned.
pub const MAX_SOURCES: usize = 65_536;
/// How often drop counts are logged (when there were drops).
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Datagrams dropped, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops([u64; DropReason::ALL.len()]);

impl Drops {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
    }
}

/// Decides which datagrams get a reply. Pure apart from the clock it is given.
#[derive(Debug)]
pub struct Limiter {
    limits: UdpLimits,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
    last_prune: Instant,
    drops: Drops,
}

impl Limiter {
    pub fn new(limits: UdpLimits, now: Instant) -> Limiter {
        let global = Bucket::full(f64::from(limits.global_rate), now);
        Limiter {
            limits,
            sources: HashMap::new(),
            global,
            last_prune: now,
            drops: Drops::default(),
        }
    }

    /// New rates from a reload; buckets refill at the new rates from now.
    pub fn set_limits(&mut self, limits: UdpLimits) {
        self.limits = limits;
    }

    /// Whether a datagram from `source` gets its reply now.
    pub fn admit(&mut self, source: SocketAddr, now: Instant) -> Result<(), DropReason> {
        let verdict = self.decide(source, now);
        if let Err(drop) = verdict {
            self.drops.count(drop);
        }
        verdict
    }

    fn decide(&mut self, source: SocketAddr, now: Instant) -> Result<(), DropReason> {
        if source.port() < self.limits.min_source_port {
            return Err(DropReason::PrivilegedSourcePort);
        }
        let (rate, burst) = (f64::from(self.limits.rate), f64::from(self.limits.burst));
        if now.saturating_duration_since(self.last_prune) >= Duration::from_secs(1) {
            // A bucket that has refilled is the same as no bucket.
            self.sources.retain(|_, bucket| {
                bucket.refill(rate, burst, now);
                bucket.tokens < burst
            });
            self.last_prune = now;
        }
        if !self.sources.contains_key(&source.ip()) && self.sources.len() >= MAX_SOURCES {
            return Err(DropReason::TooManySources);
        }
        let bucket = self
            .sources
            .entry(source.ip())
            .or_insert_with(|| Bucket::full(burst, now));
        bucket.refill(rate, burst, now);
        if bucket.tokens < 1.0 {
            return Err(DropReason::SourceRate);
        }
        let global_rate = f64::from(self.limits.global_rate);
        self.global.refill(global_rate, global_rate, now);
        if self.global.tokens < 1.0 {
            return Err(DropReason::GlobalRate);
        }
        bucket.tokens -= 1.0;
        self.global.tokens -= 1.0;
        Ok(())
    }

    /// The drop counts since the last call.
    pub fn take_drops(&mut self) -> Drops {
        std::mem::take(&mut self.drops)
    }
}

/// Echoes datagrams on `socket` until the shutdown drains.
pub async fn serve(
    socket: UdpSocket,
    limiter: Arc<Mutex<Limiter>>,
    metrics: Option<Arc<Metrics>>,
    shutdown: Shutdown,
) {
    let mut buf = vec![0u8; UDP_RECEIVE_BUFFER];
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, source) = match received {
            Ok(received) => received,
            // E.g. an ICMP error for an earlier reply: nothing to do.
            Err(error) => {
                debug!(%error, "udp receive failed");
                continue;
            }
        };
        let admitted = limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(source, Instant::now());
        match admitted {
            Ok(_) => match socket.send_to(&buf[..len], source).await {
                Ok(_) => {
                    if let Some(metrics) = &metrics {
                        metrics.udp_echoed();
                    }
                }
                Err(error) => debug!(%source, %error, "udp reply failed"),
            },
            Err(reason) => {
                if let Some(metrics) = &metrics {
                    metrics.udp_dropped(reason);
                }
            }
        }
    }
}

/// Logs the drop counts once per interval while there are drops.
pub async fn report_drops(limiter: Arc<Mutex<Limiter>>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(DROP_REPORT_INTERVAL);
    interval.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            _ = interval.tick() => {}
        }
        let drops = limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take_drops();
        if drops.total() > 0 {
            let by_reason = DropReason::ALL
                .map(|reason| format!("{} {}", reason.description(), drops.get(reason)))
                .join(", ");
            warn!(
                dropped = drops.total(),
                privileged_source_port = drops.get(DropReason::PrivilegedSourcePort),
                source_rate = drops.get(DropReason::SourceRate),
                global_rate = drops.get(DropReason::GlobalRate),
                too_many_sources = drops.get(DropReason::TooManySources),
                "udp: {} datagram(s) got no reply in the last {}s ({by_reason})",
                drops.total(),
                DROP_REPORT_INTERVAL.as_secs(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> UdpLimits {
        UdpLimits {
            min_source_port: 1024,
            rate: 10,
            burst: 20,
            global_rate: 1000,
        }
    }

    fn from(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    #[test]
    fn privileged_source_ports_get_no_reply() {
        let now = Instant::now();
        let mut limiter = Limiter::new(limits(), now);
        assert_eq!(
            limiter.admit(from("10.0.0.1", 7), now),
            Err(DropReason::PrivilegedSourcePort)
        );
        assert_eq!(
            limiter.admit(from("10.0.0.1", 1023), now),
            Err(DropReason::PrivilegedSourcePort)
        );
        assert_eq!(limiter.admit(from("10.0.0.1", 1024), now), Ok(()));
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate_and_no_lasting_ban() {
        let start = Instant::now();
        let mut limiter = Limiter::new(limits(), start);
        let source = from("10.0.0.1", 40000);
        let admitted = (0..100)
            .filter(|_| limiter.admit(source, start).is_ok())
            .count();
        assert_eq!(admitted, 20, "the burst");
        // 0.5 s later the bucket holds 5 more.
        let later = start + Duration::from_millis(500);
        let admitted = (0..100)
            .filter(|_| limiter.admit(source, later).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // Another source is not affected.
        assert_eq!(limiter.admit(from("10.0.0.2", 40000), later), Ok(()));
        assert_eq!(limiter.take_drops().get(DropReason::SourceRate), 175);
    }

    #[test]
    fn the_global_budget_caps_many_sources() {
        let start = Instant::now();
        let mut limiter = Limiter::new(
            UdpLimits {
                global_rate: 50,
                ..limits()
            },
            start,
        );
        let admitted = (0..200u32)
            .filter(|n| {
                limiter
                    .admit(
                        from(&format!("10.0.{}.{}", n / 250, n % 250 + 1), 5000),
                        start,
                    )
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 50);
        assert_eq!(limiter.take_drops().get(DropReason::GlobalRate), 150);
    }

    #[test]
    fn the_source_table_is_bounded_and_idle_sources_are_pruned() {
        let start = Instant::now();
        let mut limiter = Limiter::new(
            UdpLimits {
                global_rate: u32::MAX,
                ..limits()
            },
            start,
        );
        for n in 0..MAX_SOURCES as u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            assert!(limiter.admit(SocketAddr::new(ip, 5000), start).is_ok());
        }
        assert_eq!(
            limiter.admit(from("200.0.0.1", 5000), start),
            Err(DropReason::TooManySources)
        );
        // Once their buckets refill (2 s at 10/s for 1 token used), they are forgotten.
        let later = start + Duration::from_secs(2);
        assert_eq!(limiter.admit(from("200.0.0.1", 5000), later), Ok(()));
        assert!(limiter.sources.len() < 10);
    }
}
