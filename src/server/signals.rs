//! Operating-system signals: what starts a graceful shutdown (SIGINT,
//! SIGTERM; Ctrl-C elsewhere), and what cuts it short (the same, again).
//! The shutdown itself is [`super::shutdown`]'s.

use std::io;

/// Signal handlers, installed when this value is created.
///
/// Create it before binding listeners: a SIGTERM that arrives between the
/// `listening on` line and the handler installation would otherwise kill the
/// process without a graceful shutdown.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGINT and SIGTERM (Ctrl-C elsewhere). Must be
    /// called inside a tokio runtime.
    pub fn install() -> io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Resolves at the next signal, with its name for the log.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            // Without a handler this process would die on Ctrl-C, so a
            // failure to listen for it is treated as never signalled.
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// SIGHUP, which asks for a configuration reload. Installed when created;
/// create it before binding, as [`Signals`], so an early SIGHUP cannot kill
/// the process.
pub struct Hangups {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Hangups {
    pub fn install() -> io::Result<Hangups> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Hangups {
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Hangups {})
        }
    }

    /// Resolves at the next SIGHUP (never where there is none).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.hangup.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    }
}
