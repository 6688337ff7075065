//! The one configuration struct and where its values come from.
//!
//! Layers, lowest first: built-in defaults ← config file ← `ECHOD_*`
//! environment ← command-line flags. A higher layer replaces a whole value
//! (a `--listen` list replaces the file's `listen` list). Every layer goes
//! through the same [`Layer::set`], so a value is validated the same way
//! wherever it comes from, and the error names where it came from.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{builder::PossibleValuesParser, Parser};

use crate::{
    codec::{Framing, MAX_FRAME_LENGTH_LIMIT},
    proxy::ProxyProtocol,
};

/// Where the service listens when nothing says otherwise: loopback, so that
/// exposing it is the operator's explicit choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3600";
/// The file read from the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";
/// Prefix of the environment variables that configure the server.
pub const ENV_PREFIX: &str = "ECHOD_";

/// Every config key, in the order the docs list them.
pub const KEYS: [&str; 25] = [
    "max_connections_per_ip",
    "frame_timeout",
    "listen",
    "udp",
    "unix_socket_mode",
    "udp_min_source_port",
    "udp_rate",
    "udp_burst",
    "udp_global_rate",
    "framing",
    "max_frame_length",
    "max_connections",
    "idle_timeout",
    "shutdown_grace",
    "log_format",
    "log_level",
    "workers",
    "tcp_nodelay",
    "reuse_port",
    "proxy_protocol",
    "metrics",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_handshake_timeout",
];

/// A bad setting: exit code 2, and a message naming the key and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `echo-server`'s command line. Values arrive as text and are validated by
/// the same code as the file and the environment.
#[derive(Debug, Default, Parser)]
#[command(
    name = "echo-server",
    version,
    about = "An asynchronous TCP echo server (RFC 862 and framed echo)",
    after_help = "Every flag can also be set in the config file (snake_case key) or \
                  as ECHOD_<KEY> in the environment; flags win over the environment, \
                  which wins over the file."
)]
pub struct ServerArgs {
    /// Config file to read [default: ./config.toml when present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT or [IPv6]:PORT; port 0 picks a free
    /// port; repeat for several [default: 127.0.0.1:3600].
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// UDP address to echo datagrams on (RFC 862), HOST:PORT or
    /// [IPv6]:PORT; repeat for several [default: none].
    #[arg(long, value_name = "ADDR")]
    pub udp: Vec<String>,
    /// File mode of Unix socket files, in octal [default: 0660].
    #[arg(long, value_name = "MODE")]
    pub unix_socket_mode: Option<String>,
    /// UDP: drop replies to source ports below this (spoofed reflection
    /// at other services' ports); 0 allows all [default: 1024].
    #[arg(long, value_name = "PORT")]
    pub udp_min_source_port: Option<String>,
    /// UDP: replies per second to one source IP [default: 100].
    #[arg(long, value_name = "N")]
    pub udp_rate: Option<String>,
    /// UDP: replies one source IP may get in a burst [default: 200].
    #[arg(long, value_name = "N")]
    pub udp_burst: Option<String>,
    /// UDP: replies per second in all [default: 5000].
    #[arg(long, value_name = "N")]
    pub udp_global_rate: Option<String>,
    /// How the stream is cut into frames [default: lines].
    #[arg(long, value_parser = PossibleValuesParser::new(["lines", "raw", "length"]))]
    pub framing: Option<String>,
    /// Longest frame in bytes (a line's \n counted, a length header not)
    /// [default: 65536].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub max_frame_length: Option<String>,
    /// Connections served at once; more wait in the kernel backlog
    /// [default: 10000].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_connections: Option<String>,
    /// Close a connection after this long with no byte in or out; 0 = never
    /// [default: 300].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub idle_timeout: Option<String>,
    /// Close a connection whose unfinished frame is not complete this long
    /// after its first byte (slow senders cannot hold a slot); 0 = never
    /// [default: 60].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub frame_timeout: Option<String>,
    /// Connections one client IP may hold at once (TCP); 0 = no limit
    /// [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_connections_per_ip: Option<String>,
    /// On SIGINT/SIGTERM, how long connections may take to finish their
    /// echoes before they are cut [default: 10].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub shutdown_grace: Option<String>,
    /// Log line format on stderr [default: text].
    #[arg(long, value_parser = PossibleValuesParser::new(["text", "json"]))]
    pub log_format: Option<String>,
    /// Log filter, as a tracing EnvFilter directive such as info, debug or
    /// echod=trace [default: $RUST_LOG, else info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Runtime worker threads; 1 runs everything on one thread (tokio's
    /// current-thread runtime) [default: available cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub workers: Option<String>,
    /// Set TCP_NODELAY on accepted connections, so replies are never held
    /// back by Nagle's algorithm [default: true].
    #[arg(long, value_name = "BOOL", value_parser = PossibleValuesParser::new(["true", "false"]))]
    pub tcp_nodelay: Option<String>,
    /// Set SO_REUSEPORT on TCP and UDP listeners, so several processes can
    /// share one port and the kernel spreads connections between them
    /// [default: false].
    #[arg(long, value_name = "BOOL", value_parser = PossibleValuesParser::new(["true", "false"]))]
    pub reuse_port: Option<String>,
    /// Expect a PROXY protocol header (from HAProxy or another load
    /// balancer) at the start of every stream connection: v1 (text), v2
    /// (binary), any (either; a header is still required) [default: off].
    #[arg(long, value_parser = PossibleValuesParser::new(["off", "v1", "v2", "any"]))]
    pub proxy_protocol: Option<String>,
    /// Serve Prometheus metrics over HTTP at ADDR (HOST:PORT), path
    /// /metrics; an empty value turns them off [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// TLS certificate chain (PEM) for tls: listeners, leaf first.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Require client certificates signed by a CA in this PEM file
    /// (mutual TLS) [default: none, no client certificates asked].
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<String>,
    /// Seconds a TLS handshake may take before the connection is closed
    /// [default: 10].
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub tls_handshake_timeout: Option<String>,
}

impl ServerArgs {
    /// The flags that were given, as a layer.
    fn layer(&self) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        let mut set = |key: &str, value: Value| {
            layer
                .set(key, value)
                .map_err(|problem| ConfigError(format!("--{}: {problem}", key.replace('_', "-"))))
        };
        if !self.listen.is_empty() {
            set("listen", Value::List(self.listen.clone()))?;
        }
        if !self.udp.is_empty() {
            set("udp", Value::List(self.udp.clone()))?;
        }
        let scalars = [
            ("framing", &self.framing),
            ("max_frame_length", &self.max_frame_length),
            ("max_connections", &self.max_connections),
            ("idle_timeout", &self.idle_timeout),
            ("frame_timeout", &self.frame_timeout),
            ("max_connections_per_ip", &self.max_connections_per_ip),
            ("shutdown_grace", &self.shutdown_grace),
            ("log_format", &self.log_format),
            ("log_level", &self.log_level),
            ("workers", &self.workers),
            ("tcp_nodelay", &self.tcp_nodelay),
            ("reuse_port", &self.reuse_port),
            ("proxy_protocol", &self.proxy_protocol),
            ("metrics", &self.metrics),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_client_ca", &self.tls_client_ca),
            ("tls_handshake_timeout", &self.tls_handshake_timeout),
            ("unix_socket_mode", &self.unix_socket_mode),
            ("udp_min_source_port", &self.udp_min_source_port),
            ("udp_rate", &self.udp_rate),
            ("udp_burst", &self.udp_burst),
            ("udp_global_rate", &self.udp_global_rate),
        ];
        for (key, value) in scalars {
            if let Some(value) = value {
                set(key, Value::Text(value.clone()))?;
            }
        }
        Ok(layer)
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?} (expected text or json)")),
        }
    }
}

/// A listen address as the user wrote it: `HOST:PORT` or `[IPv6]:PORT`.
/// Host names are resolved when the server starts, not when parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("bad address {s:?}: {why} (expected HOST:PORT or [IPv6]:PORT)");
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 0 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
            inner
        } else if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets"));
        } else {
            host
        };
        let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(|c| valid_name(c) || c == ':') {
            return Err(bad("no valid host"));
        }
        Ok(ListenAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The process environment's variables that configure the server:
/// `ECHOD_*` and `RUST_LOG`. A value that is not UTF-8 is an error.
pub fn environment() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(ENV_PREFIX) || name == "RUST_LOG" {
            let value = value
                .into_string()
                .map_err(|_| ConfigError(format!("{name}: value is not valid UTF-8")))?;
            vars.push((name.to_owned(), value));
        }
    }
    Ok(vars)
}

/// Where a stream listener listens: TCP `HOST:PORT`, or a Unix socket
/// file `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(ListenAddr),
    Unix(std::path::PathBuf),
    /// TLS over TCP: `tls:HOST:PORT`.
    Tls(ListenAddr),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err(format!("bad address {s:?}: no path after unix:")),
            Some(path) if cfg!(unix) => Ok(Endpoint::Unix(path.into())),
            Some(_) => Err(format!(
                "bad address {s:?}: Unix sockets are not supported on this platform"
            )),
            None => match s.strip_prefix("tls:") {
                Some(addr) => addr.parse().map(Endpoint::Tls),
                None => s.parse().map(Endpoint::Tcp),
            },
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tls(addr) => write!(f, "tls:{addr}"),
        }
    }
}

/// UDP echo (RFC 862) settings. UDP echo is a classic reflection vector
/// (spoofed sources, echo-to-echo loops), so replies are rate limited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpLimits {
    /// Replies to source ports below this are dropped; 0 = none dropped.
    pub min_source_port: u16,
    /// Replies per second to one source IP (token bucket refill).
    pub rate: u32,
    /// Replies one source IP may get at once (token bucket size).
    pub burst: u32,
    /// Replies per second in all, across every UDP socket.
    pub global_rate: u32,
}

impl Default for UdpLimits {
    fn default() -> Self {
        UdpLimits {
            min_source_port: 1024,
            rate: 100,
            burst: 200,
            global_rate: 5000,
        }
    }
}

/// The server's whole configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Every stream address to listen on (host names resolved at start-up).
    pub listen: Vec<Endpoint>,
    /// UDP addresses to echo datagrams on; none by default.
    pub udp: Vec<ListenAddr>,
    /// File mode of Unix socket files (set explicitly, not left to umask).
    pub unix_socket_mode: u32,
    /// UDP reply limits.
    pub udp_limits: UdpLimits,
    /// How each connection's stream is cut into frames.
    pub framing: Framing,
    /// Longest frame in bytes; ignored by raw framing.
    pub max_frame_length: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Close a connection with no traffic for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose unfinished frame is older than this;
    /// `None` = never.
    pub frame_timeout: Option<Duration>,
    /// TCP connections one client IP may hold at once; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// How long a graceful shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter directive (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// Runtime worker threads; 1 = tokio's current-thread runtime.
    pub workers: usize,
    /// TCP_NODELAY on accepted connections.
    pub tcp_nodelay: bool,
    /// SO_REUSEPORT on TCP and UDP listeners.
    pub reuse_port: bool,
    /// Whether stream connections start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// Where Prometheus metrics are served; `None` = off.
    pub metrics: Option<ListenAddr>,
    /// TLS: certificate chain and key (PEM) for `tls:` listeners, and the
    /// CA bundle client certificates must chain to (mutual TLS).
    pub tls: TlsFiles,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

/// The PEM files of TLS listeners; checked (read, parsed, the key matched
/// to the certificate) at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// The default worker count: one per available core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN.parse().expect("the default address parses")],
            udp: Vec::new(),
            unix_socket_mode: 0o660,
            udp_limits: UdpLimits::default(),
            framing: Framing::Lines,
            max_frame_length: 65_536,
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            frame_timeout: Some(Duration::from_secs(60)),
            max_connections_per_ip: 0,
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            workers: default_workers(),
            tcp_nodelay: true,
            reuse_port: false,
            proxy_protocol: ProxyProtocol::Off,
            metrics: None,
            tls: TlsFiles::default(),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Builds the configuration from every layer: the config file (`--config`,
    /// else `./config.toml` when present), the `ECHOD_*` variables in `env`,
    /// and the flags.
    ///
    /// Also returns warnings to log once logging is set up: an unknown
    /// `ECHOD_*` variable is named there rather than refused, since wrappers
    /// commonly keep their own `ECHOD_OPTS`-style variables.
    pub fn load(
        args: &ServerArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let file = match &args.config {
            Some(path) => Some(Layer::from_file(path)?),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.is_file() {
                    Some(Layer::from_file(default)?)
                } else {
                    None
                }
            }
        };
        let mut warnings = Vec::new();
        let env = Layer::from_env(env, &mut warnings)?;
        let mut config = Config::default();
        for layer in file.into_iter().chain([env, args.layer()?]) {
            layer.apply_to(&mut config);
        }
        config.check_tls(&mut warnings)?;
        Ok((config, warnings))
    }

    /// Settings that only make sense together: a `tls:` listener needs a
    /// certificate and a key, and the files must be usable now, not at the
    /// first connection.
    fn check_tls(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let tls_listener = self.listen.iter().find(|e| matches!(e, Endpoint::Tls(_)));
        match (tls_listener, &self.tls.cert, &self.tls.key) {
            (Some(endpoint), None, _) | (Some(endpoint), _, None) => Err(ConfigError(format!(
                "listen {endpoint}: a TLS listener needs tls_cert and tls_key (--tls-cert FILE --tls-key FILE)"
            ))),
            (Some(_), Some(_), Some(_)) => crate::tls::server_config(&self.tls, warnings)
                .map(drop)
                .map_err(|error| ConfigError(error.to_string())),
            (None, cert, key) => {
                if cert.is_some() || key.is_some() || self.tls.client_ca.is_some() {
                    warnings.push(
                        "tls_cert, tls_key and tls_client_ca are unused: no tls: listener \
                         (unless socket activation passes a socket named tls)"
                            .into(),
                    );
                }
                Ok(())
            }
        }
    }

    /// Parses a whole config file's text (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        Layer::from_toml(text, origin)?.apply_to(&mut config);
        Ok(config)
    }
}

/// The settings one source gives; `None` = this source is silent.
#[derive(Debug, Default)]
struct Layer {
    listen: Option<Vec<Endpoint>>,
    udp: Option<Vec<ListenAddr>>,
    unix_socket_mode: Option<u32>,
    udp_min_source_port: Option<u16>,
    udp_rate: Option<u32>,
    udp_burst: Option<u32>,
    udp_global_rate: Option<u32>,
    framing: Option<Framing>,
    max_frame_length: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout: Option<Option<Duration>>,
    frame_timeout: Option<Option<Duration>>,
    max_connections_per_ip: Option<usize>,
    shutdown_grace: Option<Duration>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    workers: Option<usize>,
    tcp_nodelay: Option<bool>,
    reuse_port: Option<bool>,
    proxy_protocol: Option<ProxyProtocol>,
    metrics: Option<Option<ListenAddr>>,
    tls_cert: Option<Option<PathBuf>>,
    tls_key: Option<Option<PathBuf>>,
    tls_client_ca: Option<Option<PathBuf>>,
    tls_handshake_timeout: Option<Duration>,
}

/// A setting's value as a source gives it: text from flags and the
/// environment, typed values from TOML.
enum Value {
    Text(String),
    List(Vec<String>),
    Toml(toml::Value),
}

impl Value {
    fn text(self) -> Result<String, String> {
        match self {
            Value::Text(text) => Ok(text),
            Value::Toml(toml::Value::String(text)) => Ok(text),
            Value::Toml(other) => Err(format!("expected a string, found {}", other.type_str())),
            Value::List(_) => Err("expected one value".into()),
        }
    }

    /// A list: repeated flags, a comma-separated variable, or a TOML array.
    fn list(self) -> Result<Vec<String>, String> {
        match self {
            Value::List(items) => Ok(items),
            Value::Text(text) => Ok(text.split(',').map(|item| item.trim().to_owned()).collect()),
            Value::Toml(toml::Value::Array(items)) => items
                .into_iter()
                .map(|item| Value::Toml(item).text())
                .collect::<Result<_, _>>()
                .map_err(|_| "expected an array of strings".into()),
            Value::Toml(other) => Err(format!(
                "expected an array of strings, found {}",
                other.type_str()
            )),
        }
    }

    fn integer(self, min: u64, max: u64) -> Result<usize, String> {
        let value = match self {
            Value::Text(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("expected a whole number, found {text:?}"))?,
            Value::Toml(toml::Value::Integer(value)) => u64::try_from(value)
                .map_err(|_| format!("must be at least {min}, found {value}"))?,
            Value::Toml(other) => {
                return Err(format!("expected an integer, found {}", other.type_str()))
            }
            Value::List(_) => return Err("expected one value".into()),
        };
        if !(min..=max).contains(&value) {
            return Err(format!("must be from {min} to {max}, found {value}"));
        }
        usize::try_from(value).map_err(|_| format!("{value} is too large for this machine"))
    }

    /// A file path; empty means none.
    fn path(self) -> Result<Option<PathBuf>, String> {
        let text = self.text()?;
        Ok((!text.trim().is_empty()).then(|| PathBuf::from(text)))
    }

    fn boolean(self) -> Result<bool, String> {
        match self {
            Value::Toml(toml::Value::Boolean(value)) => Ok(value),
            Value::Text(text) => match text.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("expected true or false, found {text:?}")),
            },
            Value::Toml(other) => Err(format!("expected a boolean, found {}", other.type_str())),
            Value::List(_) => Err("expected one value".into()),
        }
    }

    /// Seconds, whole or fractional.
    fn seconds(self) -> Result<Duration, String> {
        let seconds = match self {
            Value::Text(text) => text
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("expected a number of seconds, found {text:?}"))?,
            Value::Toml(toml::Value::Integer(value)) => value as f64,
            Value::Toml(toml::Value::Float(value)) => value,
            Value::Toml(other) => {
                return Err(format!(
                    "expected a number of seconds, found {}",
                    other.type_str()
                ))
            }
            Value::List(_) => return Err("expected one value".into()),
        };
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(format!(
                "expected a non-negative number of seconds, found {seconds}"
            ));
        }
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("{seconds} seconds is too long"))
    }
}

impl Layer {
    /// Validates and records one setting; the error says what is wrong with
    /// the value, and the caller adds where it came from.
    fn set(&mut self, key: &str, value: Value) -> Result<(), String> {
        match key {
            "listen" => {
                let listen = value
                    .list()?
                    .iter()
                    .map(|addr| addr.parse())
                    .collect::<Result<Vec<Endpoint>, _>>()?;
                if listen.is_empty() {
                    return Err("at least one address is required".into());
                }
                self.listen = Some(listen);
            }
            "framing" => self.framing = Some(value.text()?.parse()?),
            "max_frame_length" => {
                self.max_frame_length = Some(value.integer(1, MAX_FRAME_LENGTH_LIMIT as u64)?)
            }
            "max_connections" => {
                let max = tokio::sync::Semaphore::MAX_PERMITS as u64;
                self.max_connections = Some(value.integer(1, max)?)
            }
            "idle_timeout" => {
                let timeout = value.seconds()?;
                self.idle_timeout = Some((!timeout.is_zero()).then_some(timeout));
            }
            "shutdown_grace" => self.shutdown_grace = Some(value.seconds()?),
            "frame_timeout" => {
                let timeout = value.seconds()?;
                self.frame_timeout = Some((!timeout.is_zero()).then_some(timeout));
            }
            "max_connections_per_ip" => {
                let max = tokio::sync::Semaphore::MAX_PERMITS as u64;
                self.max_connections_per_ip = Some(value.integer(0, max)?)
            }
            "log_format" => self.log_format = Some(value.text()?.parse()?),
            "log_level" => {
                let directive = value.text()?;
                tracing_subscriber::EnvFilter::builder()
                    .parse(&directive)
                    .map_err(|error| format!("bad filter directive {directive:?}: {error}"))?;
                self.log_level = Some(directive);
            }
            "udp" => {
                let list = value.list()?;
                // An empty variable (ECHOD_UDP=) means no UDP listeners.
                let list = if list == [""] { Vec::new() } else { list };
                self.udp = Some(
                    list.iter()
                        .map(|addr| addr.parse())
                        .collect::<Result<Vec<ListenAddr>, _>>()?,
                );
            }
            "unix_socket_mode" => {
                let text = match value {
                    Value::Toml(toml::Value::Integer(mode)) => format!("{mode:o}"),
                    other => other.text()?,
                };
                let mode = u32::from_str_radix(text.trim().trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|mode| *mode <= 0o777)
                    .ok_or_else(|| {
                        format!("expected an octal file mode such as 0660, found {text:?}")
                    })?;
                self.unix_socket_mode = Some(mode);
            }
            "udp_min_source_port" => {
                self.udp_min_source_port = Some(value.integer(0, u16::MAX as u64)? as u16)
            }
            "udp_rate" => self.udp_rate = Some(value.integer(1, u32::MAX as u64)? as u32),
            "udp_burst" => self.udp_burst = Some(value.integer(1, u32::MAX as u64)? as u32),
            "udp_global_rate" => {
                self.udp_global_rate = Some(value.integer(1, u32::MAX as u64)? as u32)
            }
            "workers" => self.workers = Some(value.integer(1, 1024)?),
            "tcp_nodelay" => self.tcp_nodelay = Some(value.boolean()?),
            "reuse_port" => self.reuse_port = Some(value.boolean()?),
            "proxy_protocol" => self.proxy_protocol = Some(value.text()?.parse()?),
            "tls_cert" => self.tls_cert = Some(value.path()?),
            "tls_key" => self.tls_key = Some(value.path()?),
            "tls_client_ca" => self.tls_client_ca = Some(value.path()?),
            "tls_handshake_timeout" => {
                let timeout = value.seconds()?;
                if timeout.is_zero() {
                    return Err("must be more than 0 seconds".into());
                }
                self.tls_handshake_timeout = Some(timeout);
            }
            "metrics" => {
                let addr = value.text()?;
                let addr = addr.trim();
                self.metrics = Some(if addr.is_empty() || addr == "off" {
                    None
                } else {
                    Some(addr.parse()?)
                });
            }
            _ => return Err(format!("unknown key (known keys: {})", KEYS.join(", "))),
        }
        Ok(())
    }

    fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError(format!("config file {origin}: cannot read: {error}")))?;
        Layer::from_toml(&text, &origin)
    }

    fn from_toml(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
            let line = error
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            let at = line
                .map(|line| format!(" line {line}:"))
                .unwrap_or_default();
            ConfigError(format!(
                "config file {origin}:{at} {}",
                error.message().trim()
            ))
        })?;
        let mut layer = Layer::default();
        for (key, value) in table {
            layer.set(&key, Value::Toml(value)).map_err(|problem| {
                ConfigError(format!("config file {origin}: {key}: {problem}"))
            })?;
        }
        Ok(layer)
    }

    /// The `ECHOD_*` variables; `RUST_LOG` counts as the log level unless
    /// `ECHOD_LOG_LEVEL` is set too.
    fn from_env(
        env: impl IntoIterator<Item = (String, String)>,
        warnings: &mut Vec<String>,
    ) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        let mut rust_log = None;
        for (name, value) in env {
            if name == "RUST_LOG" {
                rust_log = Some(value);
                continue;
            }
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if !KEYS.contains(&key.as_str()) {
                warnings.push(format!(
                    "ignoring {name}: not a setting (known: {})",
                    KEYS.map(|key| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()))
                        .join(", ")
                ));
                continue;
            }
            layer
                .set(&key, Value::Text(value))
                .map_err(|problem| ConfigError(format!("{name}: {problem}")))?;
        }
        if let (None, Some(directive)) = (&layer.log_level, rust_log) {
            layer
                .set("log_level", Value::Text(directive))
                .map_err(|problem| ConfigError(format!("RUST_LOG: {problem}")))?;
        }
        Ok(layer)
    }

    fn apply_to(self, config: &mut Config) {
        fn apply<T>(slot: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *slot = value;
            }
        }
        apply(&mut config.listen, self.listen);
        apply(&mut config.udp, self.udp);
        apply(&mut config.unix_socket_mode, self.unix_socket_mode);
        apply(
            &mut config.udp_limits.min_source_port,
            self.udp_min_source_port,
        );
        apply(&mut config.udp_limits.rate, self.udp_rate);
        apply(&mut config.udp_limits.burst, self.udp_burst);
        apply(&mut config.udp_limits.global_rate, self.udp_global_rate);
        apply(&mut config.framing, self.framing);
        apply(&mut config.max_frame_length, self.max_frame_length);
        apply(&mut config.max_connections, self.max_connections);
        apply(&mut config.idle_timeout, self.idle_timeout);
        apply(&mut config.frame_timeout, self.frame_timeout);
        apply(
            &mut config.max_connections_per_ip,
            self.max_connections_per_ip,
        );
        apply(&mut config.shutdown_grace, self.shutdown_grace);
        apply(&mut config.log_format, self.log_format);
        apply(&mut config.log_level, self.log_level);
        apply(&mut config.workers, self.workers);
        apply(&mut config.tcp_nodelay, self.tcp_nodelay);
        apply(&mut config.reuse_port, self.reuse_port);
        apply(&mut config.proxy_protocol, self.proxy_protocol);
        apply(&mut config.metrics, self.metrics);
        apply(&mut config.tls.cert, self.tls_cert);
        apply(&mut config.tls.key, self.tls_key);
        apply(&mut config.tls.client_ca, self.tls_client_ca);
        apply(
            &mut config.tls_handshake_timeout,
            self.tls_handshake_timeout,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> ServerArgs {
        ServerArgs::try_parse_from(std::iter::once("echo-server").chain(flags.iter().copied()))
            .expect("flags parse")
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> (tempfile::NamedTempFile, String) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let path = file.path().display().to_string();
        (file, path)
    }

    #[test]
    fn listen_addresses_parse_ipv4_ipv6_and_names() {
        let v4: ListenAddr = "127.0.0.1:3600".parse().unwrap();
        assert_eq!(v4.socket_addr(), Some("127.0.0.1:3600".parse().unwrap()));
        let v6: ListenAddr = "[::1]:0".parse().unwrap();
        assert_eq!(v6.socket_addr(), Some("[::1]:0".parse().unwrap()));
        assert_eq!(v6.to_string(), "[::1]:0");
        let name: ListenAddr = "localhost:3600".parse().unwrap();
        assert_eq!(
            (name.host(), name.port(), name.socket_addr()),
            ("localhost", 3600, None)
        );
    }

    #[test]
    fn unparseable_listen_addresses_are_rejected() {
        for bad in [
            "3600",
            "127.0.0.1",
            ":3600",
            "host:99999",
            "::1:3600",
            "[::1:3600",
            "[nope]:1",
            "a b:1",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn shipped_config_file_parses_and_matches_the_defaults() {
        let text = include_str!("../config.toml");
        assert_eq!(
            Config::from_toml(text, "config.toml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn flags_beat_environment_beats_file_beats_defaults() {
        let (_file, path) = file("framing = \"raw\"\nmax_connections = 5\nidle_timeout = 7\nlisten = [\"127.0.0.1:1\"]\n");
        let (config, _) = Config::load(
            &args(&["--config", &path, "--max-connections", "9"]),
            env(&[
                ("ECHOD_MAX_CONNECTIONS", "8"),
                ("ECHOD_IDLE_TIMEOUT", "0.5"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.framing, Framing::Raw);
        assert_eq!(config.max_connections, 9);
        assert_eq!(config.idle_timeout, Some(Duration::from_millis(500)));
        assert_eq!(config.listen, vec!["127.0.0.1:1".parse().unwrap()]);
        assert_eq!(config.shutdown_grace, Config::default().shutdown_grace);
    }

    #[test]
    fn a_higher_layer_replaces_the_whole_listen_list() {
        let (_file, path) = file("listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n");
        let (from_env, _) = Config::load(
            &args(&["--config", &path]),
            env(&[("ECHOD_LISTEN", "[::1]:3, 127.0.0.1:4")]),
        )
        .unwrap();
        assert_eq!(
            from_env.listen,
            vec!["[::1]:3".parse().unwrap(), "127.0.0.1:4".parse().unwrap()]
        );
        let (from_flags, _) = Config::load(
            &args(&["--config", &path, "--listen", "127.0.0.1:5"]),
            env(&[("ECHOD_LISTEN", "[::1]:3")]),
        )
        .unwrap();
        assert_eq!(from_flags.listen, vec!["127.0.0.1:5".parse().unwrap()]);
    }

    #[test]
    fn socket_family_settings_parse_from_every_layer() {
        let (_file, path) = file("udp = [\"127.0.0.1:7\", \"[::1]:7\"]\nunix_socket_mode = 0o640\nlisten = [\"unix:/run/echod.sock\", \"[::]:3600\"]\n");
        let (config, _) = Config::load(&args(&["--config", &path]), env(&[])).unwrap();
        assert_eq!(config.udp.len(), 2);
        assert_eq!(config.unix_socket_mode, 0o640);
        assert_eq!(config.listen[0], Endpoint::Unix("/run/echod.sock".into()));
        let (config, _) = Config::load(
            &args(&[
                "--config",
                &path,
                "--unix-socket-mode",
                "600",
                "--udp-rate",
                "5",
            ]),
            env(&[("ECHOD_UDP", ""), ("ECHOD_UDP_MIN_SOURCE_PORT", "0")]),
        )
        .unwrap();
        assert!(config.udp.is_empty(), "ECHOD_UDP= turns UDP off");
        assert_eq!(
            (
                config.unix_socket_mode,
                config.udp_limits.rate,
                config.udp_limits.min_source_port
            ),
            (0o600, 5, 0)
        );
        for bad in [
            ["--unix-socket-mode", "999"],
            ["--udp-rate", "0"],
            ["--udp", "nope"],
            ["--listen", "unix:"],
        ] {
            let error =
                Config::load(&args(&[bad[0], bad[1], "--config", &path]), env(&[])).unwrap_err();
            assert!(error.0.starts_with(bad[0]), "{}", error.0);
        }
    }

    #[test]
    fn unknown_echod_variables_are_warnings_not_errors() {
        let (config, warnings) = Config::load(
            &args(&["--config", &file("").1]),
            env(&[("ECHOD_OPTS", "--workers 1"), ("ECHOD_FRAMING", "raw")]),
        )
        .unwrap();
        assert_eq!(config.framing, Framing::Raw);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("ignoring ECHOD_OPTS: not a setting"),
            "{warnings:?}"
        );
    }

    #[test]
    fn idle_timeout_zero_means_off() {
        let (config, _) = Config::load(
            &args(&["--idle-timeout", "0", "--config", &file("").1]),
            env(&[]),
        )
        .unwrap();
        assert_eq!(config.idle_timeout, None);
    }

    #[test]
    fn errors_name_the_source_and_key() {
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 10] = [
            ("unknown = 1\n", &[], &[], "unknown: unknown key"),
            (
                "max_connections = \"ten\"\n",
                &[],
                &[],
                "max_connections: expected an integer, found string",
            ),
            (
                "max_frame_length = 0\n",
                &[],
                &[],
                "max_frame_length: must be from 1",
            ),
            (
                "framing = \"json\"\n",
                &[],
                &[],
                "framing: unknown framing \"json\"",
            ),
            (
                "listen = \"127.0.0.1:1\"\n",
                &[],
                &[],
                "listen: expected an array of strings, found string",
            ),
            (
                "idle_timeout = -1\n",
                &[],
                &[],
                "idle_timeout: expected a non-negative number",
            ),
            (
                "",
                &["--max-connections", "0"],
                &[],
                "--max-connections: must be from 1",
            ),
            (
                "",
                &["--listen", "nope"],
                &[],
                "--listen: bad address \"nope\"",
            ),
            (
                "",
                &[],
                &[("ECHOD_FRAMING", "xml")],
                "ECHOD_FRAMING: unknown framing",
            ),
            (
                "",
                &[],
                &[("ECHOD_FRAMING", "")],
                "ECHOD_FRAMING: unknown framing \"\"",
            ),
        ];
        for (text, flags, vars, expected) in cases {
            let (_file, path) = file(text);
            let mut flags = flags.to_vec();
            flags.extend(["--config", &path]);
            let error = Config::load(&args(&flags), env(vars)).unwrap_err();
            assert!(
                error.0.contains(expected),
                "{:?} does not contain {expected:?}",
                error.0
            );
        }
    }

    #[test]
    fn toml_syntax_errors_give_the_line() {
        let error =
            Config::from_toml("framing = \"lines\"\nmax_connections = \n", "f.toml").unwrap_err();
        assert!(
            error.0.starts_with("config file f.toml: line 2:"),
            "{}",
            error.0
        );
    }

    #[test]
    fn missing_config_file_named_by_flag_is_an_error() {
        let error =
            Config::load(&args(&["--config", "/nonexistent/echod.toml"]), env(&[])).unwrap_err();
        assert!(
            error.0.contains("/nonexistent/echod.toml: cannot read"),
            "{}",
            error.0
        );
    }

    #[test]
    fn rust_log_beats_the_file_but_not_echod_log_level() {
        let (_file, path) = file("log_level = \"warn\"\n");
        let load = |vars: &[(&str, &str)]| {
            Config::load(&args(&["--config", &path]), env(vars))
                .unwrap()
                .0
                .log_level
        };
        assert_eq!(load(&[]), "warn");
        assert_eq!(load(&[("RUST_LOG", "debug")]), "debug");
        assert_eq!(
            load(&[("RUST_LOG", "debug"), ("ECHOD_LOG_LEVEL", "trace")]),
            "trace"
        );
    }

    #[test]
    fn bad_log_filter_is_rejected() {
        let error = Config::load(
            &args(&["--log-level", "echod=loud", "--config", &file("").1]),
            env(&[]),
        )
        .unwrap_err();
        assert!(
            error.0.starts_with("--log-level: bad filter directive"),
            "{}",
            error.0
        );
    }
}
