//! SIGHUP: re-read the configuration and apply what can change without a
//! restart to connections that start from now on: the log level, the
//! timeouts, the per-IP limit, the UDP rates and the TLS certificate, key
//! and client CA (for `tls:`, `wss:` and `quic:`). Settings that need a restart are named in a WARN and
//! keep their running values; a configuration that fails validation is
//! refused with an ERROR and the running one stays. SIGHUP never stops
//! the server.

use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};

use super::{
    bind::tls_acceptor,
    echo::ConnectionSettings,
    session::{Live, Shared},
    signals::Hangups,
    udp::Limiter,
};
use crate::{
    codec::EchoCodec,
    config::{Config, ConfigError},
};

/// Loads the configuration again, from the same file, environment and
/// flags as at start-up.
pub type Load = Box<dyn FnMut() -> Result<(Config, Vec<String>), ConfigError> + Send>;

/// What a server needs to reload: the signal, and how to load.
pub struct Reloader {
    pub hangups: Hangups,
    pub load: Load,
}

/// The per-connection settings of `config`, with its TLS acceptor.
pub fn live(
    config: &Config,
    tls: Option<tokio_rustls::TlsAcceptor>,
    quic: Option<Arc<super::quic::Handshakes>>,
) -> Live {
    Live {
        settings: ConnectionSettings {
            codec: EchoCodec::new(config.framing, config.max_frame_length),
            idle_timeout: config.idle_timeout,
            frame_timeout: config.frame_timeout,
        },
        tls,
        tls_handshake_timeout: config.tls_handshake_timeout,
        header_timeout: config.proxy_header_timeout,
        quic,
    }
}

/// Loads and applies a new configuration over `running`, logging the
/// outcome; on any error `running` and the server are left as they were.
pub fn reload(
    running: &mut Config,
    load: &mut Load,
    shared: &Shared,
    limiter: Option<&Arc<Mutex<Limiter>>>,
    quic: &[quinn::Endpoint],
) {
    let (loaded, warnings) = match load() {
        Ok(loaded) => loaded,
        Err(problem) => {
            error!(
                "SIGHUP: configuration not reloaded: {problem}; the running configuration stays"
            );
            return;
        }
    };
    for warning in warnings {
        warn!("{warning}");
    }
    let next = running.reloaded(&loaded);
    // New handshakes use the new files; a bad file refuses the reload.
    let tls = match shared.live().tls {
        Some(_) => match tls_acceptor(&next) {
            Ok(acceptor) => Some(acceptor),
            Err(problem) => {
                error!("SIGHUP: configuration not reloaded: {problem}; the running configuration stays");
                return;
            }
        },
        None => None,
    };
    // QUIC too: new handshakes get the new files and timeouts.
    let quic_config = if quic.is_empty() {
        None
    } else {
        let mut warnings = Vec::new();
        match super::quic::Handshakes::new(&next, &mut warnings) {
            Ok(config) => Some(Arc::new(config)),
            Err(problem) => {
                error!("SIGHUP: configuration not reloaded: {problem}; the running configuration stays");
                return;
            }
        }
    };
    if let Err(problem) = crate::logging::set_level(&next.log_level) {
        error!("SIGHUP: configuration not reloaded: log_level: {problem}");
        return;
    }
    let restart = running.restart_only_changes(&loaded);
    if !restart.is_empty() {
        warn!(
            "SIGHUP: {} changed but take effect only at a restart; running values kept",
            restart.join(", ")
        );
    }
    shared.set_live(live(&next, tls, quic_config.clone()));
    if let Some(config) = quic_config {
        for endpoint in quic {
            endpoint.set_server_config(Some(config.server_config()));
        }
    }
    shared.gate.set_max_per_ip(next.max_connections_per_ip);
    if let Some(limiter) = limiter {
        limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_limits(next.udp_limits.clone());
    }
    *running = next;
    info!("configuration reloaded");
}
