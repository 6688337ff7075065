//! The accept loop: one per stream listener. It accepts, admits (per-IP
//! slot, then a connection permit) and spawns the session; serving the
//! connection is the session's business, not this loop's.

use std::{io, sync::Arc, time::Duration};

use tracing::{debug, warn};

use super::{
    admission::Admission,
    listen::{Listener, Stream},
    reason::Rejection,
    session::{self, Connection, Shared, Transport},
};
use crate::{config::ProxyProtocol, stream::EchoStream};

/// First and last wait after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts until the shutdown drains, then returns, dropping (closing) the
/// listener.
pub async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let shutdown = shared.coordinator.shutdown();
    let local = listener.describe();
    let transport = Transport {
        tls: listener.is_tls(),
        http: listener.is_http(),
    };
    let name: Arc<str> = local.as_str().into();
    let kind = listener.kind();
    let listener = Acceptor::new(listener, &shared, &local);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer, ip) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            // The client gave up before we got to it: nothing to wait for.
            Err(error) if is_gone_before_accept(&error) => {
                debug!(%error, "accept: connection gone before it was accepted");
                continue;
            }
            // Out of file descriptors or memory: retrying at once would spin
            // a core. Wait, and let existing connections free resources.
            Err(error) => {
                warn!(
                    %error,
                    "accept failed on {local}; retrying in {}ms",
                    backoff.as_millis()
                );
                tokio::select! {
                    biased;
                    _ = shutdown.draining() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let mut admission = shared.gate.arrive(kind);
        if !claim_ip_slot(&shared, &mut admission, ip, &peer) {
            continue;
        }
        // The connection limit: at most one accepted connection per listener
        // waits here for a slot; everyone else waits in the kernel backlog.
        let permitted = tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            permitted = admission.permit() => permitted,
        };
        if permitted.is_none() {
            return;
        }
        let connection = session::Connection {
            peer,
            admission,
            shutdown: shared.coordinator.shutdown(),
            listener: name.clone(),
            kind,
        };
        spawn_session(stream, connection, transport, &shared);
    }
}

/// A listener, and on the io_uring engine the ring accepting on it.
struct Acceptor {
    /// Declared first: dropped (its cancel submitted) before the listener
    /// closes the descriptor it accepts on.
    #[cfg(target_os = "linux")]
    ring: Option<super::uring::UringListener>,
    listener: Listener,
}

impl Acceptor {
    fn new(listener: Listener, shared: &Shared, local: &str) -> Acceptor {
        #[cfg(target_os = "linux")]
        let ring = shared.io_uring.then(|| {
            super::uring::UringListener::new(listener.as_raw_fd())
                .inspect_err(|error| {
                    warn!(%error, "{local}: cannot accept through io_uring: {error}; accepting on tokio");
                })
                .ok()
        });
        #[cfg(not(target_os = "linux"))]
        let _ = (shared, local);
        Acceptor {
            #[cfg(target_os = "linux")]
            ring: ring.flatten(),
            listener,
        }
    }

    async fn accept(&self) -> io::Result<(Stream, String, Option<std::net::IpAddr>)> {
        #[cfg(target_os = "linux")]
        if let Some(ring) = &self.ring {
            return self.listener.accept_on_ring(ring).await;
        }
        self.listener.accept().await
    }
}

/// The per-IP limit, checked before the client takes a connection slot.
/// Behind a PROXY-protocol balancer it is the header's client that counts
/// once the header is read; until then the socket peer does, unless it is a
/// trusted balancer, so silent connections from one address cannot hold
/// every slot. False when the connection is refused (logged and counted).
fn claim_ip_slot(
    shared: &Shared,
    admission: &mut Admission,
    ip: Option<std::net::IpAddr>,
    peer: &str,
) -> bool {
    let claim = if shared.proxy == ProxyProtocol::Off {
        ip
    } else if !shared.may_send_header(ip) {
        debug!(%peer, "refused: not in proxy_trusted");
        admission.reject(Rejection::ProxyUntrusted);
        return false;
    } else if shared.is_trusted(ip) {
        None
    } else {
        ip
    };
    admission.claim_ip(claim, peer).is_ok()
}

/// Hands an admitted connection to its own session task.
fn spawn_session(
    stream: Stream,
    connection: Connection,
    transport: Transport,
    shared: &Arc<Shared>,
) {
    match stream {
        #[cfg(target_os = "linux")]
        Stream::Ring { fd, unix: false } => {
            if shared.tcp_nodelay {
                if let Err(error) = socket2::SockRef::from(&fd).set_tcp_nodelay(true) {
                    debug!(peer = %connection.peer, %error, "cannot set TCP_NODELAY");
                }
            }
            let back = |fd: std::os::fd::OwnedFd| tokio::net::TcpStream::from_std(fd.into());
            on_ring(Ok(fd), back, connection, transport, shared);
        }
        #[cfg(target_os = "linux")]
        Stream::Ring { fd, unix: true } => {
            let back = |fd: std::os::fd::OwnedFd| tokio::net::UnixStream::from_std(fd.into());
            on_ring(Ok(fd), back, connection, Transport::PLAIN, shared);
        }
        Stream::Tcp(stream) => {
            // Echo replies are latency-bound: never hold one back for Nagle.
            if shared.tcp_nodelay {
                if let Err(error) = stream.set_nodelay(true) {
                    debug!(peer = %connection.peer, %error, "cannot set TCP_NODELAY");
                }
            }
            #[cfg(target_os = "linux")]
            if shared.io_uring {
                let fd = stream.into_std().map(std::os::fd::OwnedFd::from);
                let back = |fd: std::os::fd::OwnedFd| tokio::net::TcpStream::from_std(fd.into());
                return on_ring(fd, back, connection, transport, shared);
            }
            session::spawn(stream, connection, transport, shared);
        }
        #[cfg(unix)]
        Stream::Unix(stream) => {
            #[cfg(target_os = "linux")]
            if shared.io_uring {
                let fd = stream.into_std().map(std::os::fd::OwnedFd::from);
                let back = |fd: std::os::fd::OwnedFd| tokio::net::UnixStream::from_std(fd.into());
                return on_ring(fd, back, connection, Transport::PLAIN, shared);
            }
            session::spawn(stream, connection, Transport::PLAIN, shared);
        }
    }
}

/// Serves the connection on this thread's io_uring; on the tokio engine
/// (`back`) when this thread cannot have a ring (logged once per thread).
#[cfg(target_os = "linux")]
fn on_ring<S: EchoStream + Send + 'static>(
    fd: io::Result<std::os::fd::OwnedFd>,
    back: impl FnOnce(std::os::fd::OwnedFd) -> io::Result<S>,
    connection: Connection,
    transport: Transport,
    shared: &Arc<Shared>,
) {
    let fd = match fd {
        Ok(fd) => fd,
        Err(error) => {
            debug!(peer = %connection.peer, %error, "cannot take the socket from tokio");
            return;
        }
    };
    match super::uring::UringStream::new(fd) {
        Ok(stream) => session::spawn(stream, connection, transport, shared),
        Err((error, fd)) => {
            thread_local! {
                static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
            }
            if !WARNED.replace(true) {
                warn!(%error, "no io_uring on this thread: {error}; its connections use the tokio engine");
            }
            match back(fd) {
                Ok(stream) => session::spawn(stream, connection, transport, shared),
                Err(error) => debug!(peer = %connection.peer, %error, "cannot serve"),
            }
        }
    }
}

fn is_gone_before_accept(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
