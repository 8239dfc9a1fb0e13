//! The one configuration struct (SPEC §5) and how TOML, `STELLAR_*` variables and flags
//! land in it, in rising priority.
//!
//! Every option is written once, in the `options!` list below (name, type, default, doc,
//! attributes), which generates [`Config`] with its `Default`, and [`Args`], the same
//! list as optional command-line flags (each also read from `STELLAR_<NAME>`), with the
//! doc as each flag's help. Layers are merged as TOML tables, so an option is named the
//! same in the file, the environment and the flags, and `stellar --help` prints the
//! defaults straight from `Config::default()`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which I/O driver each worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    Uring,
    Epoll,
}

/// What happens to a connection whose queued bytes pass `max_backpressure` (SPEC §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close with 1008 "slow consumer".
    Close,
    /// Drop the message for that connection and count the drop.
    Drop,
}

/// `STELLAR_` then `name` in upper case, computed at compile time: the environment
/// variable of an option (`max_payload` → `STELLAR_MAX_PAYLOAD`). `N` must be
/// `name.len() + 8`; anything else fails the build.
const fn env_var<const N: usize>(name: &str) -> [u8; N] {
    let prefix = b"STELLAR_";
    let name = name.as_bytes();
    assert!(N == prefix.len() + name.len(), "env_var!: wrong length");
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < prefix.len() {
            prefix[i]
        } else {
            name[i - prefix.len()].to_ascii_uppercase()
        };
        i += 1;
    }
    out
}

/// The `STELLAR_<NAME>` variable of option `$name`, as a `&'static str`.
macro_rules! env_var {
    ($name:ident) => {{
        const BYTES: [u8; 8 + stringify!($name).len()] = env_var(stringify!($name));
        const NAME: &str = match std::str::from_utf8(&BYTES) {
            Ok(name) => name,
            Err(_) => panic!("option names are ASCII"),
        };
        NAME
    }};
}

/// The rustdoc line stating an option's default: its `shown` text, else its expression.
macro_rules! default_doc {
    ($default:expr) => {
        concat!("Default: `", stringify!($default), "`.")
    };
    ($default:expr, $shown:literal) => {
        concat!("Default: ", $shown, ".")
    };
}

/// The one list of options. Each entry, written once, is
///
/// ```text
/// /// doc (rustdoc of the `Config` field and the option's `--help` text)
/// name: Type = default, flag FlagType
///     [, serde(..)]      attributes of the `Config` field (durations as strings)
///     [, arg(..)]        extra clap attributes of the flag (`short`, delimiters)
///     [, shown ".."]     the default as `--help` shows it, when the value reads badly
/// ```
///
/// and becomes a field of [`Config`] (with its default in `Default`) and an optional
/// `--name` flag of [`Args`] that also reads `STELLAR_NAME`. `FlagType` is what the
/// flag parses: the field type, `T` for an `Option<T>` field, `String` for a duration.
macro_rules! options {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr, flag $flag:ty
        $(, serde($($serde:tt)+))?
        $(, arg($($arg:tt)+))?
        $(, shown $shown:literal)?;
    )+) => {
        /// Every option of the server, with its default. Durations are written `30s`,
        /// `500ms`, `5m` or as plain seconds.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = default_doc!($default $(, $shown)?)]
                $(#[serde($($serde)+)])?
                pub $name: $ty,
            )+
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $($name: $default,)+ }
            }
        }

        /// The command line: every option of [`Config`] as a flag that also reads
        /// `STELLAR_<NAME>`. Unset flags leave the lower layers alone.
        #[derive(Debug, Default, clap::Parser, Serialize)]
        #[command(name = "stellar", version, about = "Stellar real-time messaging server")]
        pub struct Args {
            /// TOML configuration file.
            #[arg(long, env = "STELLAR_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])+
                #[arg(long, env = env_var!($name) $(, $($arg)+)?)]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$flag>,
            )+
        }

        /// `--help` shows these defaults as written here rather than as their value.
        const SHOWN_DEFAULTS: &[(&str, &str)] = &[$($((stringify!($name), $shown),)?)+];

    };
}

options! {
    /// Address to listen on (IPv4 or IPv6).
    host: String = String::from("0.0.0.0"), flag String;
    /// WebSocket and HTTP port; 0 picks a free port.
    port: u16 = 3000, flag u16, arg(short);
    /// Binary TCP protocol port; unset, `port + 1` (a free port when `port` is 0).
    tcp_port: Option<u16> = None, flag u16, shown "port + 1";
    /// Worker threads, each pinned to a core; 0 = one per core.
    workers: usize = 0, flag usize, arg(short), shown "0 (every core)";
    /// I/O driver: `auto` (io_uring where the kernel allows it, else epoll), `uring`, `epoll`.
    driver: Driver = Driver::Auto, flag Driver;
    /// How often idle clients are pinged (often enough for NATs and proxies, which drop
    /// idle flows after a minute or more).
    heartbeat_interval: Duration = Duration::from_secs(30), flag String,
        serde(with = "duration");
    /// A client silent this long is dropped (two missed pings); at least `heartbeat_interval`.
    heartbeat_timeout: Duration = Duration::from_secs(60), flag String,
        serde(with = "duration");
    /// Server-wide connection cap; past it new clients get 1008 "Server full".
    max_connections: usize = 100_000, flag usize;
    /// Connections from one IP address; past it 1008 "Too many connections".
    max_connections_per_ip: usize = 1000, flag usize;
    /// Rooms the server holds, a guard against memory exhaustion by room names.
    max_rooms: usize = 100_000, flag usize;
    /// Rooms one client may be in.
    max_rooms_per_client: usize = 50, flag usize;
    /// Largest inbound message (WebSocket, all fragments) or TCP frame body, in bytes;
    /// larger ones close with 1009. Bounds what one message can make the server buffer.
    max_payload: usize = 1 << 20, flag usize;
    /// Bytes queued to one connection before the slow-consumer policy applies; with
    /// `max_payload`, the bound on a connection's send memory.
    max_backpressure: usize = 1 << 20, flag usize;
    /// Slow-consumer policy: `close` (1008 "slow consumer") or `drop` (the message, counted).
    slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy::Close, flag SlowConsumerPolicy;
    /// Messages per client per `rate_limit_window` (token bucket); 0 = off.
    rate_limit: u32 = 100, flag u32;
    /// Rate-limit window.
    rate_limit_window: Duration = Duration::from_secs(1), flag String,
        serde(with = "duration");
    /// Time allowed to finish the handshake (and `auth`, when required).
    connect_timeout: Duration = Duration::from_secs(10), flag String,
        serde(with = "duration");
    /// Time a closing connection has to get its close frame out (a slow consumer's
    /// waits behind the write in flight) and finish the close handshake; then its
    /// socket is shut down.
    close_timeout: Duration = Duration::from_secs(2), flag String,
        serde(with = "duration");
    /// Graceful shutdown drains this long before forcing.
    shutdown_timeout: Duration = Duration::from_secs(10), flag String,
        serde(with = "duration");
    /// Negotiate permessage-deflate (RFC 7692) with WebSocket clients that offer it: a
    /// room message is compressed once for all its members that agreed.
    compression: bool = false, flag bool;
    /// Messages shorter than this many bytes are sent uncompressed even to clients that
    /// negotiated compression.
    compression_threshold: usize = 128, flag usize;
    /// Browser `Origin`s served, on upgrades and plain HTTP (listed ones get CORS
    /// headers), comma-separated; empty = any.
    allowed_origins: Vec<String> = Vec::new(), flag Vec<String>,
        arg(value_delimiter = ','), shown "any";
    /// Directory served at `/public/` and by the `file` verb.
    public_dir: Option<PathBuf> = None, flag PathBuf;
    /// Largest file the `file` verb and `/public/` serve, in bytes; larger ones are
    /// refused (`file_too_large`, HTTP 413) rather than read.
    max_file_bytes: u64 = 16 << 20, flag u64;
    /// Largest HTTP request head, in bytes (431 past it).
    max_header_bytes: usize = 8 * 1024, flag usize;
    /// Most HTTP header lines (431 past it).
    max_headers: usize = 64, flag usize;
    /// Redis URL (`redis://host:port/db`) for multi-node scale-out: every node started
    /// with the same URL and `redis_prefix` is one server; unset = a single node.
    redis_url: Option<String> = None, flag String;
    /// Namespace of this cluster's keys and channels in Redis (several clusters can
    /// share one Redis).
    redis_prefix: String = "stellar".to_owned(), flag String;
    /// How often a node refreshes its liveness in Redis. A node not heard of for twice
    /// this is dead: its clients are out of every room everywhere within 3x this.
    redis_refresh: Duration = Duration::from_secs(1), flag String,
        serde(with = "duration");
    /// Messages waiting for the cluster thread, at most (Redis slower than the
    /// publishers): past it, messages are not published to the other nodes (counted in
    /// `unpublished`; a history room's epoch ends), and local delivery goes on.
    redis_max_pending: usize = 100_000, flag usize;
    /// Messages of history kept per room, for recovery on reconnect; 0 = off.
    history_size: usize = 0, flag usize;
    /// How long a room's history lives after its last message (then the next message
    /// starts a new epoch).
    history_ttl: Duration = Duration::from_secs(300), flag String,
        serde(with = "duration");
    /// Room patterns (`name` or `prefix:*`, comma-separated) that keep history when
    /// `history_size` > 0; empty = every room.
    history_rooms: Vec<String> = Vec::new(), flag Vec<String>,
        arg(value_delimiter = ','), shown "every room";
    /// TLS certificate chain (PEM): with `tls_key`, both ports speak TLS only (wss and
    /// HTTPS on `port`, TLS on `tcp_port`); reloaded on SIGHUP.
    tls_cert: Option<PathBuf> = None, flag PathBuf;
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    tls_key: Option<PathBuf> = None, flag PathBuf;
    /// HS256 secret for JWT auth; unset = auth off.
    jwt_secret: Option<String> = None, flag String, arg(hide_env_values = true);
    /// Serve the demo page (chat and live stats, built into the binary) at `/demo`; off
    /// by default, as an admin page should be in production.
    demo: bool = false, flag bool;
    /// Room patterns (`name` or `prefix:*`, comma-separated) whose members get
    /// `presence-join` / `presence-leave` events.
    presence_rooms: Vec<String> = Vec::new(), flag Vec<String>,
        arg(value_delimiter = ','), shown "none";
    /// Conformance-test mode: every WebSocket connection echoes each message verbatim,
    /// with no `welcome` and no envelope (`scripts/autobahn server`).
    echo: bool = false, flag bool;
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The worker count with 0 resolved to the number of cores.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The TCP port with its default resolved.
    pub fn tcp_port(&self) -> u16 {
        match (self.tcp_port, self.port) {
            (Some(p), _) => p,
            (None, 0) => 0,
            (None, p) => p.saturating_add(1),
        }
    }

    /// Applies a partial configuration (a TOML table of some options) over this one.
    pub fn merged(&self, partial: toml::Table) -> Result<Self, ConfigError> {
        let mut table =
            toml::Table::try_from(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        table.extend(partial);
        let merged: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        merged.validate()?;
        Ok(merged)
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_payload", self.max_payload),
            ("max_backpressure", self.max_backpressure),
            ("max_header_bytes", self.max_header_bytes),
            ("max_headers", self.max_headers),
            ("redis_max_pending", self.redis_max_pending),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be positive")));
        }
        if self.heartbeat_timeout < self.heartbeat_interval {
            return Err(ConfigError::Invalid(
                "heartbeat_timeout must be at least heartbeat_interval".into(),
            ));
        }
        if self.worker_count() > 64 {
            return Err(ConfigError::Invalid("at most 64 workers".into()));
        }
        Ok(())
    }
}

impl Args {
    /// The clap command with each option's help ending in its default, read from
    /// `Config::default()` so the two can never disagree.
    pub fn command_with_defaults() -> clap::Command {
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut cmd = <Self as clap::CommandFactory>::command();
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| !matches!(id.as_str(), "help" | "version" | "config"))
            .collect();
        for id in ids {
            let shown = match SHOWN_DEFAULTS.iter().find(|(name, _)| *name == id) {
                Some((_, shown)) => (*shown).to_owned(),
                None => match defaults.get(&id) {
                    Some(toml::Value::String(s)) => s.clone(),
                    Some(toml::Value::Array(a)) if a.is_empty() => "none".into(),
                    Some(v) => v.to_string(),
                    None => "none".into(),
                },
            };
            let suffix = format!(" [default: {shown}]");
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                let long = a.get_long_help().map(ToString::to_string);
                let a = a.help(format!("{help}{suffix}"));
                match long {
                    Some(long) => a.long_help(format!("{long}{suffix}")),
                    None => a,
                }
            });
        }
        cmd
    }

    /// The configuration of this process: its command line (with `--help` from
    /// [`Args::command_with_defaults`]) and `STELLAR_*` variables resolved over the
    /// defaults. Exits with the usage on a bad flag, as clap does.
    pub fn config_from_command_line() -> Result<Config, String> {
        use clap::FromArgMatches;
        let matches = Self::command_with_defaults().get_matches();
        Self::from_arg_matches(&matches)
            .map_err(|e| e.to_string())
            .and_then(|args| args.resolve().map_err(|e| e.to_string()))
    }

    /// Resolves defaults < TOML file < environment < flags into one checked [`Config`].
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut layer = toml::Table::new();
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            layer = toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        let flags = toml::Table::try_from(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        layer.extend(flags);
        Config::default().merged(layer)
    }
}

/// Parses `30s`, `500ms`, `5m`, `1h` or plain (possibly fractional) seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{text}`"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit in duration `{text}` (use ms, s, m, h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration `{text}`"))
}

/// Serde for durations as human strings (`"30s"`) or numbers of seconds.
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
            Raw::Seconds(s) => Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stellar.toml");
        std::fs::write(
            &file,
            "port = 4000\nmax_rooms = 7\nheartbeat_interval = \"2s\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "stellar",
            "--config",
            file.to_str().unwrap(),
            "--port",
            "5000",
        ]);
        let config = args.resolve().unwrap();
        assert_eq!(config.port, 5000);
        assert_eq!(config.max_rooms, 7);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.tcp_port(), 5001);
        assert_eq!(config.max_payload, 1 << 20);
    }

    #[test]
    fn unknown_option_in_file_is_an_error() {
        let partial: toml::Table = toml::from_str("portt = 1").unwrap();
        assert!(Config::default().merged(partial).is_err());
    }

    #[test]
    fn every_flag_reads_its_stellar_variable() {
        let cmd = <Args as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let expected = format!("STELLAR_{}", id.to_uppercase());
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(env, Some(expected.as_str()), "--{id}");
        }
    }

    #[test]
    fn help_lists_every_default() {
        let help = Args::command_with_defaults().render_help().to_string();
        for needle in [
            "[default: 3000]",
            "[default: 1048576]",
            "[default: 30s]",
            "[default: port + 1]",
            "[default: close]",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }
}
