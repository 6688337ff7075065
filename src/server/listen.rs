//! Stream listeners: TCP, and Unix domain sockets where the platform has
//! them. Both hand their connections to the same echo loop.

use std::{io, net::SocketAddr, path::Path};

use tokio::net::{TcpListener, TcpStream};

/// A bound stream listener.
pub enum Listener {
    Tcp(TcpListener),
    /// TCP whose connections start with a TLS handshake.
    Tls(TcpListener),
    /// HTTP/1.1 with WebSocket echo (`ws:`).
    Ws(TcpListener),
    /// The same over TLS (`wss:`).
    Wss(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

/// What kind of listener a connection came through, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Tls,
    Unix,
    Ws,
    Wss,
    Quic,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 6] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::Unix,
        ListenerKind::Ws,
        ListenerKind::Wss,
        ListenerKind::Quic,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Unix => "unix",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Quic => "quic",
        }
    }
}

/// An accepted connection.
pub enum Stream {
    /// Plain TCP, or on a TLS listener the TCP connection under the
    /// handshake still to come ([`Listener::is_tls`]).
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    /// Accepted by the io_uring engine; `unix` for a Unix listener's.
    #[cfg(target_os = "linux")]
    Ring {
        fd: std::os::fd::OwnedFd,
        unix: bool,
    },
}

impl Listener {
    /// What the logs call this listener: `127.0.0.1:3600`, `unix:/run/echod.sock`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "tcp listener".into(), |addr| addr.to_string()),
            Listener::Tls(listener) => listener
                .local_addr()
                .map_or_else(|_| "tls listener".into(), |addr| format!("tls:{addr}")),
            Listener::Ws(listener) => listener
                .local_addr()
                .map_or_else(|_| "ws listener".into(), |addr| format!("ws:{addr}")),
            Listener::Wss(listener) => listener
                .local_addr()
                .map_or_else(|_| "wss listener".into(), |addr| format!("wss:{addr}")),
            #[cfg(unix)]
            Listener::Unix(listener) => format!("unix:{}", listener.path.display()),
        }
    }

    pub fn kind(&self) -> ListenerKind {
        match self {
            Listener::Tcp(_) => ListenerKind::Tcp,
            Listener::Tls(_) => ListenerKind::Tls,
            Listener::Ws(_) => ListenerKind::Ws,
            Listener::Wss(_) => ListenerKind::Wss,
            #[cfg(unix)]
            Listener::Unix(_) => ListenerKind::Unix,
        }
    }

    /// Whether connections start with a TLS handshake.
    pub fn is_tls(&self) -> bool {
        matches!(self, Listener::Tls(_) | Listener::Wss(_))
    }

    /// Whether connections speak HTTP (and WebSocket) rather than echo.
    pub fn is_http(&self) -> bool {
        matches!(self, Listener::Ws(_) | Listener::Wss(_))
    }

    /// The TCP address (plain or TLS), with its real port.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_listener()?.local_addr().ok()
    }

    /// The TCP socket under a TCP, TLS, WebSocket listener.
    pub fn tcp_listener(&self) -> Option<&TcpListener> {
        match self {
            Listener::Tcp(listener)
            | Listener::Tls(listener)
            | Listener::Ws(listener)
            | Listener::Wss(listener) => Some(listener),
            #[cfg(unix)]
            Listener::Unix(_) => None,
        }
    }

    /// A listener of this one's kind (not Unix) on `socket`.
    pub fn same_kind(&self, socket: TcpListener) -> Listener {
        match self {
            Listener::Tls(_) => Listener::Tls(socket),
            Listener::Ws(_) => Listener::Ws(socket),
            Listener::Wss(_) => Listener::Wss(socket),
            _ => Listener::Tcp(socket),
        }
    }

    /// The listening socket (the io_uring engine accepts on it).
    #[cfg(unix)]
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Tcp(listener)
            | Listener::Tls(listener)
            | Listener::Ws(listener)
            | Listener::Wss(listener) => listener.as_raw_fd(),
            Listener::Unix(listener) => listener.listener.as_raw_fd(),
        }
    }

    /// [`accept`](Self::accept) through this thread's ring.
    #[cfg(target_os = "linux")]
    pub async fn accept_on_ring(
        &self,
        ring: &super::uring::UringListener,
    ) -> io::Result<(Stream, String, Option<std::net::IpAddr>)> {
        let fd = ring.accept().await?;
        if let Listener::Unix(listener) = self {
            let peer = format!("unix:{}", listener.path.display());
            return Ok((Stream::Ring { fd, unix: true }, peer, None));
        }
        // A client already gone has no peer address: gone before accept.
        let gone = || io::Error::from(io::ErrorKind::ConnectionAborted);
        let peer = socket2::SockRef::from(&fd)
            .peer_addr()
            .map_err(|_| gone())?;
        let peer = peer.as_socket().ok_or_else(gone)?;
        Ok((
            Stream::Ring { fd, unix: false },
            peer.to_string(),
            Some(peer.ip()),
        ))
    }

    /// Accepts one connection, with the peer's name for the logs (`IP:PORT`,
    /// or the socket path for Unix clients, which have no address) and its
    /// IP when it has one.
    pub async fn accept(&self) -> io::Result<(Stream, String, Option<std::net::IpAddr>)> {
        match self {
            Listener::Tcp(listener)
            | Listener::Tls(listener)
            | Listener::Ws(listener)
            | Listener::Wss(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((Stream::Tcp(stream), peer.to_string(), Some(peer.ip())))
            }
            #[cfg(unix)]
            Listener::Unix(listener) => {
                let (stream, _) = listener.listener.accept().await?;
                let peer = format!("unix:{}", listener.path.display());
                Ok((Stream::Unix(stream), peer, None))
            }
        }
    }
}

/// A Unix listener that removes its socket file when dropped — if the file
/// is still the one it created (another server may have replaced it).
#[cfg(unix)]
pub struct UnixListener {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    /// The file's (device, inode) when this process created it; `None` for
    /// a socket inherited from systemd, whose file systemd owns.
    identity: Option<(u64, u64)>,
}

#[cfg(unix)]
impl UnixListener {
    /// Binds `path` with file mode `mode` (set explicitly, not left to the
    /// umask). A socket file left by a dead server is replaced; a live
    /// server's socket, or a file that is not a socket, is an error and is
    /// never deleted.
    pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err("a server is already listening there".into()),
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        // Nobody listens: a dead server's leftover.
                        std::fs::remove_file(path).map_err(|error| {
                            format!("cannot remove the stale socket file: {error}")
                        })?;
                        tracing::info!("replaced the stale socket file {}", path.display());
                    }
                    Err(error) => {
                        return Err(format!(
                            "cannot tell whether the socket file is in use: {error}"
                        ))
                    }
                }
            }
            Ok(_) => return Err("the path exists and is not a socket (not removing it)".into()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.to_string()),
        }
        let (listener, identity) = bind_staged(path, mode)?;
        Ok(UnixListener {
            listener,
            path: path.to_owned(),
            identity: Some(identity),
        })
    }

    /// Serves a listening socket passed by systemd; its file is left alone.
    pub fn inherited(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map_or_else(|| "(unnamed)".into(), Path::to_path_buf);
        Ok(UnixListener {
            listener: tokio::net::UnixListener::from_std(listener)?,
            path,
            identity: None,
        })
    }
}

/// Binds the socket inside a directory only this process can enter (mode
/// 0700, next to `path` so the rename stays on one file system), gives it
/// `mode` there, then renames it into place. No system call that follows
/// a symlink ever touches `path`: someone who can write to its directory
/// cannot swap in a symlink and have the server chmod a file it did not
/// create. Returns the socket file's (device, inode).
#[cfg(unix)]
fn bind_staged(path: &Path, mode: u32) -> Result<(tokio::net::UnixListener, (u64, u64)), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    static STAGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Short, so the staged path fits where the final one does (sun_path
    // holds 107 bytes); unique per process and bind.
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let private = parent.join(format!(".e{:x}.{n}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|error| format!("cannot create {}: {error}", private.display()))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener =
            tokio::net::UnixListener::bind(&staged).map_err(|error| error.to_string())?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|error| format!("cannot set the file mode: {error}"))?;
        let meta = std::fs::symlink_metadata(&staged).map_err(|error| error.to_string())?;
        std::fs::rename(&staged, path)
            .map_err(|error| format!("cannot move the socket into place: {error}"))?;
        Ok((listener, (meta.dev(), meta.ino())))
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

#[cfg(unix)]
impl Drop for UnixListener {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if Some((meta.dev(), meta.ino())) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
