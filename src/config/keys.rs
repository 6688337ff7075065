//! Every setting, one entry each: its name (the file's key; the flag is
//! `--name-with-dashes`, the variable `ECHOD_NAME`), how it parses into
//! [`Config`], its built-in default and its help. Adding a setting is one
//! entry here and one field in [`Config`]; the flag, the variable, the file
//! key, the default and the docs' checks all follow from it.

use super::{
    value::Value, Config, Engine, LogFormat, ProxyProtocol, RuntimeShape, MAX_FRAME_LENGTH_LIMIT,
};

/// A setting's built-in default.
#[derive(Clone, Copy)]
pub enum Builtin {
    /// Text parsed by the key's own parser, as if a flag had given it.
    Text(&'static str),
    /// Found out at start-up (the number of cores).
    Computed(fn() -> String),
}

impl Builtin {
    /// The default as a flag would give it.
    pub fn text(&self) -> String {
        match self {
            Builtin::Text(text) => (*text).to_owned(),
            Builtin::Computed(compute) => compute(),
        }
    }
}

/// One configuration key.
pub struct Key {
    /// snake_case: the file's key; `--kebab-case` flag; `ECHOD_UPPER` variable.
    pub name: &'static str,
    /// The flag's value placeholder in `--help`.
    pub value_name: &'static str,
    /// `--help` text, ending with the default as users should read it.
    pub help: &'static str,
    pub default: Builtin,
    /// The only values the flag takes, when there is a fixed set.
    pub choices: &'static [&'static str],
    /// Repeatable flag; comma-separated variable; array in the file.
    pub list: bool,
    /// Validates a value and stores it; the error says what is wrong with
    /// the value, and the caller adds where it came from.
    pub set: fn(&mut Config, Value) -> Result<(), String>,
}

impl Key {
    /// The command-line flag: `--max-connections`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// The environment variable: `ECHOD_MAX_CONNECTIONS`.
    pub fn variable(&self) -> String {
        format!("{}{}", super::ENV_PREFIX, self.name.to_ascii_uppercase())
    }

    /// The default as a value for [`Key::set`].
    pub fn default_value(&self) -> Value {
        Value::Text(self.default.text())
    }
}

/// The key named `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.name == name)
}

/// Every key's name, for messages that list them.
pub fn names() -> String {
    KEYS.iter()
        .map(|key| key.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `HOST:PORT`, or off for `""` (and `off`).
fn admin_address(v: Value) -> Result<Option<crate::addr::ListenAddr>, String> {
    let addr = v.text()?;
    match addr.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some),
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
fn parse_network(item: &str) -> Result<ipnet::IpNet, String> {
    item.parse::<ipnet::IpNet>()
        .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("bad network {item:?} (expected a CIDR such as 10.0.0.0/8, or an IP address)")
        })
}

/// Stores a parsed value: every setter ends this way.
fn store<T>(slot: &mut T, value: T) -> Result<(), String> {
    *slot = value;
    Ok(())
}

const SEMAPHORE_MAX: u64 = tokio::sync::Semaphore::MAX_PERMITS as u64;

fn cores() -> String {
    std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .to_string()
}

/// Every key, in the order `--help` lists them.
pub static KEYS: &[Key] = &[
    Key {
        name: "listen",
        value_name: "ADDR",
        help: "Address to listen on, HOST:PORT or [IPv6]:PORT; port 0 picks a free \
               port; repeat for several [default: 127.0.0.1:3600]",
        default: Builtin::Text(crate::addr::DEFAULT_LISTEN),
        choices: &[],
        list: true,
        set: |c, v| {
            c.listen = v.parsed_list()?;
            if c.listen.is_empty() {
                return Err("at least one address is required".into());
            }
            Ok(())
        },
    },
    Key {
        name: "udp",
        value_name: "ADDR",
        help: "UDP address to echo datagrams on (RFC 862), HOST:PORT or \
               [IPv6]:PORT; repeat for several [default: none]",
        default: Builtin::Text(""),
        choices: &[],
        list: true,
        set: |c, v| store(&mut c.udp, v.parsed_list()?),
    },
    Key {
        name: "unix_socket_mode",
        value_name: "MODE",
        help: "File mode of Unix socket files, in octal [default: 0660]",
        default: Builtin::Text("0660"),
        choices: &[],
        list: false,
        set: |c, v| {
            let text = match v {
                Value::Toml(toml::Value::Integer(mode)) => format!("{mode:o}"),
                other => other.text()?,
            };
            c.unix_socket_mode = u32::from_str_radix(text.trim().trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o777)
                .ok_or_else(|| {
                    format!("expected an octal file mode such as 0660, found {text:?}")
                })?;
            Ok(())
        },
    },
    Key {
        name: "udp_min_source_port",
        value_name: "PORT",
        help: "UDP: drop replies to source ports below this (spoofed reflection \
               at other services' ports); 0 allows all [default: 1024]",
        default: Builtin::Text("1024"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.udp_limits.min_source_port, v.bounded(0, u16::MAX)?),
    },
    Key {
        name: "udp_rate",
        value_name: "N",
        help: "UDP: replies per second to one source IP [default: 100]",
        default: Builtin::Text("100"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.udp_limits.rate, v.bounded(1, u32::MAX)?),
    },
    Key {
        name: "udp_burst",
        value_name: "N",
        help: "UDP: replies one source IP may get in a burst [default: 200]",
        default: Builtin::Text("200"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.udp_limits.burst, v.bounded(1, u32::MAX)?),
    },
    Key {
        name: "udp_global_rate",
        value_name: "N",
        help: "UDP: replies per second in all [default: 5000]",
        default: Builtin::Text("5000"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.udp_limits.global_rate, v.bounded(1, u32::MAX)?),
    },
    Key {
        name: "framing",
        value_name: "FRAMING",
        help: "How the stream is cut into frames [default: lines]",
        default: Builtin::Text("lines"),
        choices: &["lines", "raw", "length"],
        list: false,
        set: |c, v| store(&mut c.framing, v.parsed()?),
    },
    Key {
        name: "max_frame_length",
        value_name: "BYTES",
        help: "Longest frame in bytes (a line's \\n counted, a length header not) \
               [default: 65536]",
        default: Builtin::Text("65536"),
        choices: &[],
        list: false,
        set: |c, v| {
            store(
                &mut c.max_frame_length,
                v.integer(1, MAX_FRAME_LENGTH_LIMIT as u64)?,
            )
        },
    },
    Key {
        name: "max_connections",
        value_name: "N",
        help: "Connections served at once; more wait in the kernel backlog \
               [default: 10000]",
        default: Builtin::Text("10000"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.max_connections, v.integer(1, SEMAPHORE_MAX)?),
    },
    Key {
        name: "idle_timeout",
        value_name: "SECS",
        help: "Close a connection after this long with no byte in or out; 0 = never \
               [default: 300]",
        default: Builtin::Text("300"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.idle_timeout, v.optional_seconds()?),
    },
    Key {
        name: "frame_timeout",
        value_name: "SECS",
        help: "Close a connection whose unfinished frame is not complete this long \
               after its first byte (slow senders cannot hold a slot); 0 = never \
               [default: 60]",
        default: Builtin::Text("60"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.frame_timeout, v.optional_seconds()?),
    },
    Key {
        name: "max_connections_per_ip",
        value_name: "N",
        help: "Connections one client IP may hold at once (TCP); 0 = no limit \
               [default: 0]",
        default: Builtin::Text("0"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.max_connections_per_ip, v.integer(0, SEMAPHORE_MAX)?),
    },
    Key {
        name: "shutdown_grace",
        value_name: "SECS",
        help: "On SIGINT/SIGTERM, how long connections may take to finish their \
               echoes before they are cut [default: 10]",
        default: Builtin::Text("10"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.shutdown_grace, v.seconds()?),
    },
    Key {
        name: "log_format",
        value_name: "FORMAT",
        help: "Log line format on stderr [default: text]",
        default: Builtin::Text("text"),
        choices: &["text", "json"],
        list: false,
        set: |c, v| store(&mut c.log_format, v.parsed::<LogFormat>()?),
    },
    Key {
        name: "log_level",
        value_name: "LEVEL",
        help: "Log filter, as a tracing EnvFilter directive such as info, debug or \
               echod=trace [default: $RUST_LOG, else info]",
        default: Builtin::Text("info"),
        choices: &[],
        list: false,
        set: |c, v| {
            let directive = v.text()?;
            tracing_subscriber::EnvFilter::builder()
                .parse(&directive)
                .map_err(|error| format!("bad filter directive {directive:?}: {error}"))?;
            c.log_level = directive;
            Ok(())
        },
    },
    Key {
        name: "workers",
        value_name: "N",
        help: "Runtime worker threads; 1 runs everything on one thread (tokio's \
               current-thread runtime) [default: available cores]",
        default: Builtin::Computed(cores),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.workers, v.integer(1, 1024)?),
    },
    Key {
        name: "runtime",
        value_name: "SHAPE",
        help: "per-core: one single-threaded runtime per worker, each with its own \
               SO_REUSEPORT socket per TCP listener (no work stealing, no cross-thread \
               wake-ups); work-stealing: one tokio multi-thread runtime \
               [default: work-stealing, which keeps its tail latency when cores are \
               shared; see BENCHMARKS.md]",
        default: Builtin::Text("work-stealing"),
        choices: &["per-core", "work-stealing"],
        list: false,
        set: |c, v| store(&mut c.runtime, v.parsed::<RuntimeShape>()?),
    },
    Key {
        name: "engine",
        value_name: "ENGINE",
        help: "tokio: epoll readiness, a recv and a send per message; io-uring (Linux): \
               one io_uring per thread for TCP and Unix connections (multishot receive \
               into provided buffers, batched sends), on per-core runtimes; falls back \
               to tokio with a warning where io_uring is unavailable [default: tokio]",
        default: Builtin::Text("tokio"),
        choices: &["tokio", "io-uring"],
        list: false,
        set: |c, v| store(&mut c.engine, v.parsed::<Engine>()?),
    },
    Key {
        name: "tcp_nodelay",
        value_name: "BOOL",
        help: "Set TCP_NODELAY on accepted connections, so replies are never held \
               back by Nagle's algorithm [default: true]",
        default: Builtin::Text("true"),
        choices: &["true", "false"],
        list: false,
        set: |c, v| store(&mut c.tcp_nodelay, v.boolean()?),
    },
    Key {
        name: "reuse_port",
        value_name: "BOOL",
        help: "Set SO_REUSEPORT on TCP and UDP listeners, so several processes can \
               share one port and the kernel spreads connections between them \
               [default: false]",
        default: Builtin::Text("false"),
        choices: &["true", "false"],
        list: false,
        set: |c, v| store(&mut c.reuse_port, v.boolean()?),
    },
    Key {
        name: "proxy_protocol",
        value_name: "PROXY_PROTOCOL",
        help: "Expect a PROXY protocol header (from HAProxy or another load \
               balancer) at the start of every stream connection: v1 (text), v2 \
               (binary), any (either; a header is still required) [default: off]",
        default: Builtin::Text("off"),
        choices: &["off", "v1", "v2", "any"],
        list: false,
        set: |c, v| store(&mut c.proxy_protocol, v.parsed::<ProxyProtocol>()?),
    },
    Key {
        name: "proxy_header_timeout",
        value_name: "SECS",
        help: "With the PROXY protocol on, close a connection whose whole header has \
               not arrived this long after it was accepted, whatever the other \
               timeouts say [default: 5]",
        default: Builtin::Text("5"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.proxy_header_timeout, v.positive_seconds()?),
    },
    Key {
        name: "proxy_trusted",
        value_name: "CIDR",
        help: "With the PROXY protocol on, only these networks (or addresses) may \
               send a header; other peers are closed before anything is read; \
               repeat for several [default: none, every peer may]",
        default: Builtin::Text(""),
        choices: &[],
        list: true,
        set: |c, v| {
            let networks: Result<Vec<_>, _> =
                v.list()?.iter().map(|item| parse_network(item)).collect();
            store(&mut c.proxy_trusted, networks?)
        },
    },
    Key {
        name: "quic_alpn",
        value_name: "LIST",
        help: "ALPN protocols quic: listeners accept (comma-separated or repeated); \
               a client offering none of them is refused in the handshake [default: echo]",
        default: Builtin::Text("echo"),
        choices: &[],
        list: true,
        set: |c, v| {
            // `--quic-alpn echo,h3` as well as repeated flags.
            let alpn: Vec<String> = v
                .list()?
                .iter()
                .flat_map(|item| item.split(','))
                .map(|item| item.trim().to_owned())
                .collect();
            if alpn.is_empty() {
                return Err("needs at least one protocol".into());
            }
            if let Some(bad) = alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
                return Err(format!("{bad:?} is not an ALPN protocol (1 to 255 bytes)"));
            }
            store(&mut c.quic_alpn, alpn)
        },
    },
    Key {
        name: "quic_max_streams",
        value_name: "N",
        help: "Bidirectional streams one QUIC connection may have open at once (the \
               stream credit given to the client) [default: 100]",
        default: Builtin::Text("100"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.quic_max_streams, v.integer(1, 100_000)?),
    },
    Key {
        name: "admin",
        value_name: "ADDR",
        help: "Serve the admin endpoint over HTTP at ADDR (HOST:PORT): /metrics \
               (Prometheus), /livez, /readyz; an empty value turns it off \
               [default: off]",
        default: Builtin::Text(""),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.admin, admin_address(v)?),
    },
    Key {
        name: "metrics",
        value_name: "ADDR",
        help: "The same as --admin (the endpoint serves /metrics too) [default: off]",
        default: Builtin::Text(""),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.admin, admin_address(v)?),
    },
    Key {
        name: "drain_delay",
        value_name: "SECS",
        help: "At SIGTERM/SIGINT, answer /readyz with 503 at once but keep accepting \
               and serving for this long (so a load balancer can take the instance \
               out of rotation), then shut down gracefully [default: 0]",
        default: Builtin::Text("0"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.drain_delay, v.seconds()?),
    },
    Key {
        name: "tls_cert",
        value_name: "FILE",
        help: "TLS certificate chain (PEM) for tls: listeners, leaf first",
        default: Builtin::Text(""),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.tls.cert, v.path()?),
    },
    Key {
        name: "tls_key",
        value_name: "FILE",
        help: "TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) matching --tls-cert",
        default: Builtin::Text(""),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.tls.key, v.path()?),
    },
    Key {
        name: "tls_client_ca",
        value_name: "FILE",
        help: "Require client certificates signed by a CA in this PEM file \
               (mutual TLS) [default: none, no client certificates asked]",
        default: Builtin::Text(""),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.tls.client_ca, v.path()?),
    },
    Key {
        name: "tls_handshake_timeout",
        value_name: "SECS",
        help: "Seconds a TLS handshake may take before the connection is closed \
               [default: 10]",
        default: Builtin::Text("10"),
        choices: &[],
        list: false,
        set: |c, v| store(&mut c.tls_handshake_timeout, v.positive_seconds()?),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        for (i, key) in KEYS.iter().enumerate() {
            assert!(
                key.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                key.name
            );
            assert!(
                KEYS[..i].iter().all(|other| other.name != key.name),
                "{} twice",
                key.name
            );
        }
    }

    #[test]
    fn every_default_parses_with_its_own_key() {
        for key in KEYS {
            let mut config = Config::default();
            (key.set)(&mut config, key.default_value())
                .unwrap_or_else(|problem| panic!("{}: {problem}", key.name));
        }
    }
}
