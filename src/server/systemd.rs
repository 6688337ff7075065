//! systemd integration: socket activation and readiness notification.
//!
//! Under a `.socket` unit, systemd binds the listeners and passes them as
//! descriptors 3, 4, … with `LISTEN_FDS`/`LISTEN_PID` set (`sd_listen_fds(3)`);
//! the server then serves those instead of binding its `listen` list, so the
//! ports stay open (clients wait in the backlog) across restarts. With
//! `Type=notify` the server says `READY=1` once it serves and `STOPPING=1`
//! when a shutdown starts (`sd_notify(3)`). A TCP socket named `tls`
//! (`FileDescriptorName=tls`, passed as `LISTEN_FDNAMES`) is served as a
//! `tls:` listener. Both come from the `sd-notify`
//! crate; without systemd (no variables set) they do nothing. On platforms
//! without systemd they are no-ops.

use std::io;

/// A socket handed over by the service manager.
#[derive(Debug)]
pub enum Inherited {
    Tcp(std::net::TcpListener),
    /// A TCP listener named `tls` (`FileDescriptorName=tls` in the socket
    /// unit): served with TLS, using `tls_cert` and `tls_key`.
    Tls(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
    Udp(std::net::UdpSocket),
}

/// The sockets passed by socket activation, in order; empty when the
/// process was not socket-activated. A descriptor that is not a listening
/// stream socket or a datagram socket is an error naming it.
#[cfg(unix)]
pub fn inherited() -> io::Result<Vec<Inherited>> {
    use std::os::fd::FromRawFd;

    let mut sockets = Vec::new();
    for (fd, name) in sd_notify::listen_fds_with_names()? {
        // SAFETY: under the socket activation protocol the descriptors from
        // 3 to 3 + LISTEN_FDS belong to this process (LISTEN_PID is checked)
        // and nothing else in it has taken them; each is wrapped exactly once.
        let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket activation: descriptor {fd} {what}"),
            )
        };
        let kind = socket.r#type().map_err(|_| bad("is not a socket"))?;
        let is_unix = socket.local_addr()?.is_unix();
        socket.set_nonblocking(true)?;
        let inherited = if kind == socket2::Type::STREAM {
            if !socket.is_listener()? {
                return Err(bad("is a stream socket that is not listening"));
            }
            match (is_unix, name.as_str()) {
                (true, "tls") => return Err(bad("is named tls but is a Unix socket")),
                (true, _) => Inherited::Unix(socket.into()),
                (false, "tls") => Inherited::Tls(socket.into()),
                (false, _) => Inherited::Tcp(socket.into()),
            }
        } else if kind == socket2::Type::DGRAM && !is_unix {
            Inherited::Udp(socket.into())
        } else {
            return Err(bad(
                "is neither a TCP/Unix stream listener nor a UDP socket",
            ));
        };
        sockets.push(inherited);
    }
    Ok(sockets)
}

#[cfg(not(unix))]
pub fn inherited() -> io::Result<Vec<Inherited>> {
    Ok(Vec::new())
}

/// Tells the service manager the server is serving (`READY=1`).
pub fn notify_ready() {
    #[cfg(unix)]
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells the service manager a shutdown has started (`STOPPING=1`).
pub fn notify_stopping() {
    #[cfg(unix)]
    notify(&[sd_notify::NotifyState::Stopping]);
}

#[cfg(unix)]
fn notify(state: &[sd_notify::NotifyState]) {
    // Without NOTIFY_SOCKET this does nothing; a failure to reach systemd
    // must not stop the service.
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}
