//! The one configuration struct and where its values come from; pure data,
//! no I/O beyond reading the file and the environment.
//!
//! Layers, lowest first: built-in defaults ← config file ← `ECHOD_*`
//! environment ← command-line flags. A higher layer replaces a whole value
//! (a `--listen` list replaces the file's `listen` list). Each key is one
//! entry of [`keys::KEYS`], and every layer goes through that entry's
//! parser, so a value is validated the same way wherever it comes from, and
//! the error names where it came from. Start-up and reload both call
//! [`Config::load`].

mod keys;
mod settings;
mod value;

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

pub use crate::addr::{Endpoint, ListenAddr, DEFAULT_LISTEN};
use crate::codec::{Framing, MAX_FRAME_LENGTH_LIMIT};
pub use keys::{Key, KEYS};
pub use settings::{Engine, LogFormat, ProxyProtocol, RuntimeShape, TlsFiles, UdpLimits};
use value::Value;

/// The file read from the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";
/// Prefix of the environment variables that configure the server.
pub const ENV_PREFIX: &str = "ECHOD_";
/// Longest config file read: a config is a few kilobytes, and reading
/// `/dev/zero` must not eat memory.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;
/// Frame limits above this are allowed but warned about: each connection
/// may hold one such frame in memory.
pub const LARGE_FRAME_LENGTH: usize = 64 * 1024 * 1024;

/// A bad setting: exit code 2, and a message naming the key and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `echo-server`'s command line: `--config` and one flag per key, built
/// from [`KEYS`]. Values stay text here and are validated by the same code
/// as the file and the environment.
#[derive(Debug, Default)]
pub struct ServerArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// The flags given, in the table's order.
    flags: Vec<(&'static str, Vec<String>)>,
}

impl ServerArgs {
    /// The `clap` command: `--help`, `--version` and one flag per key.
    pub fn command() -> clap::Command {
        use clap::{builder::PossibleValuesParser, Arg, ArgAction};
        let command = clap::Command::new("echo-server")
            .version(env!("CARGO_PKG_VERSION"))
            .about("An asynchronous TCP echo server (RFC 862 and framed echo)")
            .after_help(
                "Every flag can also be set in the config file (snake_case key) or \
                 as ECHOD_<KEY> in the environment; flags win over the environment, \
                 which wins over the file.",
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .help("Config file to read [default: ./config.toml when present]"),
            );
        KEYS.iter().fold(command, |command, key| {
            let mut arg = Arg::new(key.name)
                .long(key.flag()[2..].to_owned())
                .value_name(key.value_name)
                .help(key.help)
                .allow_negative_numbers(true)
                .action(if key.list {
                    ArgAction::Append
                } else {
                    ArgAction::Set
                });
            if !key.choices.is_empty() {
                arg = arg.value_parser(PossibleValuesParser::new(key.choices));
            }
            command.arg(arg)
        })
    }

    /// Parses the process's arguments; prints help or a usage error and
    /// exits (code 2) as clap does.
    pub fn parse() -> ServerArgs {
        Self::from_matches(&Self::command().get_matches())
    }

    /// Parses `args` (the first is the program name).
    pub fn try_parse_from<I, T>(args: I) -> Result<ServerArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Self::from_matches(
            &Self::command().try_get_matches_from(args)?,
        ))
    }

    /// The config file these arguments read: `--config FILE`, else
    /// `./config.toml` in the working directory when it exists, else none.
    pub fn config_file(&self) -> Option<&Path> {
        match &self.config {
            Some(path) => Some(path.as_path()),
            None => Some(Path::new(DEFAULT_CONFIG_FILE)).filter(|path| path.is_file()),
        }
    }

    fn from_matches(matches: &clap::ArgMatches) -> ServerArgs {
        let flags = KEYS
            .iter()
            .filter_map(|key| {
                let values = matches.get_many::<String>(key.name)?;
                Some((key.name, values.cloned().collect()))
            })
            .collect();
        ServerArgs {
            config: matches.get_one::<String>("config").map(PathBuf::from),
            flags,
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
    /// Per-core runtimes or one work-stealing runtime.
    pub runtime: RuntimeShape,
    /// tokio's reactor or io_uring for TCP and Unix connections.
    pub engine: Engine,
    /// TCP_NODELAY on accepted connections.
    pub tcp_nodelay: bool,
    /// SO_REUSEPORT on TCP and UDP listeners.
    pub reuse_port: bool,
    /// Whether stream connections start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// How long a PROXY header may take to arrive.
    pub proxy_header_timeout: Duration,
    /// Peers allowed to send a PROXY header; empty = every peer.
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// Where the admin endpoint (metrics, liveness, readiness) is served;
    /// `None` = off. Set by `admin` or its alias `metrics`.
    pub admin: Option<ListenAddr>,
    /// At a shutdown signal, how long to keep serving with readiness off.
    pub drain_delay: Duration,
    /// TLS: certificate chain and key (PEM) for `tls:` listeners, and the
    /// CA bundle client certificates must chain to (mutual TLS).
    pub tls: TlsFiles,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// ALPN protocols `quic:` listeners accept.
    pub quic_alpn: Vec<String>,
    /// Bidirectional streams a QUIC client may have open at once.
    pub quic_max_streams: usize,
}

impl Default for Config {
    /// Every key's built-in default, from the table.
    fn default() -> Self {
        let mut config = Config {
            listen: Vec::new(),
            udp: Vec::new(),
            unix_socket_mode: 0,
            udp_limits: UdpLimits {
                min_source_port: 0,
                rate: 0,
                burst: 0,
                global_rate: 0,
            },
            framing: Framing::default(),
            max_frame_length: 0,
            max_connections: 0,
            idle_timeout: None,
            frame_timeout: None,
            max_connections_per_ip: 0,
            shutdown_grace: Duration::ZERO,
            log_format: LogFormat::default(),
            log_level: String::new(),
            workers: 0,
            runtime: RuntimeShape::default(),
            engine: Engine::default(),
            tcp_nodelay: false,
            reuse_port: false,
            proxy_protocol: ProxyProtocol::default(),
            proxy_header_timeout: Duration::ZERO,
            proxy_trusted: Vec::new(),
            admin: None,
            drain_delay: Duration::ZERO,
            quic_alpn: Vec::new(),
            quic_max_streams: 0,
            tls: TlsFiles::default(),
            tls_handshake_timeout: Duration::ZERO,
        };
        for key in KEYS {
            if let Err(problem) = (key.set)(&mut config, key.default_value()) {
                unreachable!("the built-in default of {} is invalid: {problem}", key.name);
            }
        }
        config
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

impl Config {
    /// The runtime shape that runs: a ring belongs to a thread, so the
    /// io_uring engine runs per core whatever `runtime` says.
    pub fn runtime_shape(&self) -> RuntimeShape {
        match self.engine {
            Engine::IoUring => RuntimeShape::PerCore,
            Engine::Tokio => self.runtime,
        }
    }

    /// Builds the configuration from every layer: the config file (`--config`,
    /// else `./config.toml` when present), the `ECHOD_*` variables in `env`,
    /// and the flags.
    ///
    /// Also returns notes to log once logging is set up: which file was
    /// read, and warnings. An unknown `ECHOD_*` variable is named there
    /// rather than refused, since wrappers commonly keep their own
    /// `ECHOD_OPTS`-style variables.
    pub fn load(
        args: &ServerArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut config = Config::default();
        let mut warnings = Vec::new();
        if let Some(path) = args.config_file() {
            config.apply_file(path)?;
        }
        config.apply_env(env, &mut warnings)?;
        for (name, values) in &args.flags {
            let key = keys::find(name).expect("flags are made from the table");
            let value = match (key.list, values.as_slice()) {
                (false, [value]) => Value::Text(value.clone()),
                _ => Value::List(values.clone()),
            };
            (key.set)(&mut config, value)
                .map_err(|problem| ConfigError(format!("{}: {problem}", key.flag())))?;
        }
        config.check(&mut warnings)?;
        Ok((config, warnings))
    }

    /// Settings that only make sense together, and settings that are
    /// allowed but deserve a warning. (TLS files are read and checked by
    /// the server before it binds, in one place.)
    fn check(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let tls_listener = self.listen.iter().find(|e| e.is_tls());
        match (tls_listener, &self.tls.cert, &self.tls.key) {
            (Some(endpoint), None, _) | (Some(endpoint), _, None) => {
                return Err(ConfigError(format!(
                    "listen {endpoint}: a TLS listener needs tls_cert and tls_key (--tls-cert FILE --tls-key FILE)"
                )))
            }
            (None, cert, key) if cert.is_some() || key.is_some() || self.tls.client_ca.is_some() => {
                warnings.push(
                    "tls_cert, tls_key and tls_client_ca are unused: no tls:, wss: or quic: listener \
                     (unless socket activation passes a socket named tls)"
                        .into(),
                );
            }
            _ => {}
        }
        if self.proxy_protocol == ProxyProtocol::Off && !self.proxy_trusted.is_empty() {
            warnings.push("proxy_trusted is unused: proxy_protocol is off".into());
        }
        if self.max_frame_length > LARGE_FRAME_LENGTH && self.framing != Framing::Raw {
            warnings.push(format!(
                "max_frame_length {} is over {} MiB: every connection may hold a frame that large in memory",
                self.max_frame_length,
                LARGE_FRAME_LENGTH >> 20
            ));
        }
        if let Some(admin) = &self.admin {
            let loopback = admin.socket_addr().map(|addr| addr.ip().is_loopback());
            if loopback != Some(true) && admin.host() != "localhost" {
                warnings.push(format!(
                    "admin endpoint on {admin}: reachable beyond this host; it has no authentication"
                ));
            }
        }
        Ok(())
    }

    /// The keys whose new values `new` would need a restart to take
    /// effect (listen addresses, framing, workers, …), by name.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let differs = [
            ("listen", self.listen != new.listen),
            ("udp", self.udp != new.udp),
            (
                "unix_socket_mode",
                self.unix_socket_mode != new.unix_socket_mode,
            ),
            ("framing", self.framing != new.framing),
            (
                "max_frame_length",
                self.max_frame_length != new.max_frame_length,
            ),
            (
                "max_connections",
                self.max_connections != new.max_connections,
            ),
            ("log_format", self.log_format != new.log_format),
            ("workers", self.workers != new.workers),
            ("runtime", self.runtime != new.runtime),
            ("engine", self.engine != new.engine),
            ("tcp_nodelay", self.tcp_nodelay != new.tcp_nodelay),
            ("reuse_port", self.reuse_port != new.reuse_port),
            ("proxy_protocol", self.proxy_protocol != new.proxy_protocol),
            ("proxy_trusted", self.proxy_trusted != new.proxy_trusted),
            ("admin", self.admin != new.admin),
            ("quic_alpn", self.quic_alpn != new.quic_alpn),
            (
                "quic_max_streams",
                self.quic_max_streams != new.quic_max_streams,
            ),
        ];
        differs
            .into_iter()
            .filter_map(|(name, differs)| differs.then_some(name))
            .collect()
    }

    /// This configuration with what a reload can change taken from `new`:
    /// the log level, the timeouts, the per-IP limit, the UDP rates and the
    /// TLS files. Everything else keeps its running value.
    pub fn reloaded(&self, new: &Config) -> Config {
        Config {
            log_level: new.log_level.clone(),
            idle_timeout: new.idle_timeout,
            frame_timeout: new.frame_timeout,
            shutdown_grace: new.shutdown_grace,
            drain_delay: new.drain_delay,
            tls_handshake_timeout: new.tls_handshake_timeout,
            proxy_header_timeout: new.proxy_header_timeout,
            max_connections_per_ip: new.max_connections_per_ip,
            udp_limits: new.udp_limits.clone(),
            tls: new.tls.clone(),
            ..self.clone()
        }
    }

    /// Parses a whole config file's text (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.apply_toml(text, origin)?;
        Ok(config)
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let origin = path.display().to_string();
        let cannot = |problem: String| ConfigError(format!("config file {origin}: {problem}"));
        let file = std::fs::File::open(path).map_err(|e| cannot(format!("cannot read: {e}")))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| cannot(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_CONFIG_FILE {
            return Err(cannot(format!(
                "larger than {} KiB; not a config file?",
                MAX_CONFIG_FILE >> 10
            )));
        }
        self.apply_toml(&text, &origin)
    }

    fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
            // Lines are counted by the newlines before the error, so one
            // that starts a line is not reported on the line above.
            let at = error
                .span()
                .map(|span| {
                    let line = 1 + text.as_bytes()[..span.start]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count();
                    format!(" line {line}:")
                })
                .unwrap_or_default();
            ConfigError(format!(
                "config file {origin}:{at} {}",
                error.message().trim()
            ))
        })?;
        for (name, value) in table {
            let problem = match keys::find(&name) {
                Some(key) => (key.set)(self, Value::Toml(value)),
                None => Err(format!("unknown key (known keys: {})", keys::names())),
            };
            problem.map_err(|problem| {
                ConfigError(format!("config file {origin}: {name}: {problem}"))
            })?;
        }
        Ok(())
    }

    /// The `ECHOD_*` variables; `RUST_LOG` counts as the log level unless
    /// `ECHOD_LOG_LEVEL` is set too.
    fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let mut vars = Vec::new();
        let mut rust_log = None;
        for (name, value) in env {
            if name == "RUST_LOG" {
                rust_log = Some(value);
                continue;
            }
            let Some(suffix) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            match keys::find(&suffix.to_ascii_lowercase()) {
                Some(key) => vars.push((name, key, value)),
                None => warnings.push(format!(
                    "ignoring {name}: not a setting (known: {})",
                    KEYS.iter()
                        .map(Key::variable)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        let log_level = keys::find("log_level").expect("log_level is a key");
        if let (Some(directive), false) = (rust_log, vars.iter().any(|v| v.1.name == "log_level")) {
            vars.insert(0, ("RUST_LOG".to_owned(), log_level, directive));
        }
        for (name, key, value) in vars {
            (key.set)(self, Value::Text(value))
                .map_err(|problem| ConfigError(format!("{name}: {problem}")))?;
        }
        Ok(())
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
        let text = include_str!("../../config.toml");
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
        // An error that starts at column 0 is on its own line, not the one above.
        let error = Config::from_toml("framing = \"lines\"\n[oops\n", "f.toml").unwrap_err();
        assert!(
            error.0.starts_with("config file f.toml: line 2:"),
            "{}",
            error.0
        );
    }

    #[test]
    fn a_config_file_over_the_size_bound_is_refused_without_reading_it_all() {
        let error = Config::load(&args(&["--config", "/dev/zero"]), env(&[])).unwrap_err();
        assert!(error.0.contains("larger than 1024 KiB"), "{}", error.0);
    }

    /// The `key = ` assignments of config.toml, commented out or not.
    fn keys_in_config_toml() -> Vec<String> {
        include_str!("../../config.toml")
            .lines()
            .map(|line| line.trim_start_matches('#').trim())
            .filter_map(|line| line.split_once(" = ").map(|(key, _)| key.to_owned()))
            .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect()
    }

    /// The keys the README's settings table names (`` `--flag` / `key` ``).
    fn keys_in_readme() -> Vec<String> {
        include_str!("../../README.md")
            .lines()
            .filter(|line| line.starts_with("| `--"))
            .flat_map(|line| {
                let cell = line.split('|').nth(1).unwrap_or_default();
                cell.split(", ")
                    .filter_map(|pair| pair.split_once(" / "))
                    .map(|(_, key)| key.trim().trim_matches('`').to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn config_toml_and_the_readme_list_exactly_the_keys() {
        let mut table: Vec<String> = KEYS.iter().map(|key| key.name.to_owned()).collect();
        table.sort();
        for (what, mut listed) in [
            ("config.toml", keys_in_config_toml()),
            ("README.md", keys_in_readme()),
        ] {
            listed.sort();
            listed.dedup();
            assert_eq!(listed, table, "{what} and the key table differ");
        }
    }

    #[test]
    fn a_reload_either_applies_each_key_or_names_it_as_restart_only() {
        for key in KEYS {
            let mut changed = Config::default();
            // A value other than the default, valid for the key.
            let other = match key.name {
                "listen" | "udp" | "metrics" | "admin" => "127.0.0.1:9",
                "unix_socket_mode" => "0600",
                "framing" => "raw",
                "runtime" => "per-core",
                "engine" => "io-uring",
                "log_format" => "json",
                "log_level" => "debug",
                "tcp_nodelay" => "false",
                "reuse_port" => "true",
                "proxy_protocol" => "v2",
                "proxy_trusted" => "10.0.0.0/8",
                "quic_alpn" => "h3",
                name if name.starts_with("tls_") && !name.ends_with("timeout") => "/some.pem",
                _ => "7",
            };
            (key.set)(&mut changed, Value::Text(other.into())).unwrap();
            let running = Config::default();
            assert_ne!(changed, running, "{} did not change", key.name);
            // `metrics` is the same setting as `admin`.
            let name = if key.name == "metrics" {
                "admin"
            } else {
                key.name
            };
            let named = running.restart_only_changes(&changed) == [name];
            let applied = running.reloaded(&changed) == changed;
            assert!(
                named != applied,
                "{}: a reload must apply it or name it as restart-only (named {named}, applied {applied})",
                key.name
            );
        }
    }

    #[test]
    fn risky_but_allowed_settings_are_warned_about() {
        let warnings = |flags: &[&str]| {
            let mut flags = flags.to_vec();
            let (_file, path) = file("");
            flags.extend(["--config", &path]);
            Config::load(&args(&flags), env(&[])).unwrap().1
        };
        assert!(warnings(&[]).is_empty());
        assert!(warnings(&["--metrics", "127.0.0.1:0"]).is_empty());
        let said = |flags: &[&str], what: &str| {
            let found = warnings(flags);
            assert!(
                found.iter().any(|w| w.contains(what)),
                "{flags:?}: {found:?}"
            );
        };
        said(&["--max-frame-length", "100000000"], "over 64 MiB");
        said(&["--metrics", "0.0.0.0:9090"], "no authentication");
        said(
            &["--proxy-trusted", "10.0.0.0/8"],
            "proxy_trusted is unused",
        );
        assert!(warnings(&["--max-frame-length", "100000000", "--framing", "raw"]).is_empty());
    }

    #[test]
    fn every_key_has_a_flag_and_a_variable() {
        let help = ServerArgs::command().render_long_help().to_string();
        for key in KEYS {
            assert!(help.contains(&key.flag()), "--help lacks {}", key.flag());
            let mut layers = Config::default();
            layers
                .apply_env([(key.variable(), key.default.text())], &mut Vec::new())
                .unwrap_or_else(|e| panic!("{}: {e}", key.variable()));
        }
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
