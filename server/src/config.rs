//! The one configuration struct (SPEC §5) and how TOML, `STELLAR_*` variables and flags
//! land in it, in rising priority.
//!
//! [`Config`] holds every option with its default; [`Args`] is the same list as optional
//! command-line flags (each also read from `STELLAR_<NAME>`). Layers are merged as TOML
//! tables, so an option is named the same in the file, the environment and the flags,
//! and `stellar --help` prints the defaults straight from `Config::default()`.

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

/// Every option of the server, with its default. Durations are written `30s`, `500ms`,
/// `5m` or as plain seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `0.0.0.0`.
    pub host: String,
    /// WebSocket and HTTP port. Default 3000; 0 picks a free port.
    pub port: u16,
    /// Binary TCP protocol port. Default: `port + 1` (or a free port when `port` is 0).
    pub tcp_port: Option<u16>,
    /// Worker threads, one per core. Default 0 = every core.
    pub workers: usize,
    /// I/O driver. Default `auto`.
    pub driver: Driver,
    /// How often idle clients are pinged. Default 30 s.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A client silent this long is dropped. Default 60 s.
    #[serde(with = "duration")]
    pub heartbeat_timeout: Duration,
    /// Server-wide connection cap; past it new clients get 1008 "Server full". Default 100 000.
    pub max_connections: usize,
    /// Connections from one IP address. Default 1000.
    pub max_connections_per_ip: usize,
    /// Rooms the server holds. Default 100 000.
    pub max_rooms: usize,
    /// Rooms one client may be in. Default 50.
    pub max_rooms_per_client: usize,
    /// Largest inbound message (WebSocket, all fragments) or TCP frame body, in bytes;
    /// larger ones close with 1009. Default 1 MiB.
    pub max_payload: usize,
    /// Bytes queued to one connection before the slow-consumer policy applies. Default 1 MiB.
    pub max_backpressure: usize,
    /// Slow-consumer policy. Default `close`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Messages per client per `rate_limit_window`. Default 100.
    pub rate_limit: u32,
    /// Rate-limit window. Default 1 s.
    #[serde(with = "duration")]
    pub rate_limit_window: Duration,
    /// Time allowed to finish the handshake (and `auth`, when required). Default 10 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Graceful shutdown drains this long before forcing. Default 10 s.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// permessage-deflate. Default off.
    pub compression: bool,
    /// Accepted `Origin`s; empty = any. Default any.
    pub allowed_origins: Vec<String>,
    /// Directory served at `/public/` and by the `file` verb. Default none.
    pub public_dir: Option<PathBuf>,
    /// Largest file the `file` verb and `/public/` serve, in bytes; larger ones are
    /// refused (`file_too_large`, HTTP 413) rather than read. Default 16 MiB.
    pub max_file_bytes: u64,
    /// Largest HTTP request head in bytes. Default 8 KiB.
    pub max_header_bytes: usize,
    /// Most HTTP header lines. Default 64.
    pub max_headers: usize,
    /// Redis URL for multi-node scale-out. Default none (single node).
    pub redis_url: Option<String>,
    /// Messages of history kept per room. Default 0 (off).
    pub history_size: usize,
    /// How long history is kept. Default 5 min.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// TLS certificate (PEM). Default none.
    pub tls_cert: Option<PathBuf>,
    /// TLS key (PEM). Default none.
    pub tls_key: Option<PathBuf>,
    /// HS256 secret for JWT auth. Default none (auth off).
    pub jwt_secret: Option<String>,
    /// Conformance-test mode: every WebSocket connection echoes each message verbatim,
    /// with no `welcome` and no envelope (`scripts/autobahn server`). Default off.
    pub echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 3000,
            tcp_port: None,
            workers: 0,
            driver: Driver::Auto,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(60),
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            max_rooms: 100_000,
            max_rooms_per_client: 50,
            max_payload: 1 << 20,
            max_backpressure: 1 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            rate_limit: 100,
            rate_limit_window: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            compression: false,
            allowed_origins: Vec::new(),
            public_dir: None,
            max_file_bytes: 16 << 20,
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            redis_url: None,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            tls_cert: None,
            tls_key: None,
            jwt_secret: None,
            echo: false,
        }
    }
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

/// The command line: every option of [`Config`] as a flag that also reads
/// `STELLAR_<NAME>`. Unset flags leave the lower layers alone.
#[derive(Debug, Default, clap::Parser, Serialize)]
#[command(
    name = "stellar",
    version,
    about = "Stellar real-time messaging server"
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "STELLAR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[arg(long, env = "STELLAR_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[arg(long, short, env = "STELLAR_PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[arg(long, env = "STELLAR_TCP_PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    #[arg(long, short, env = "STELLAR_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[arg(long, env = "STELLAR_DRIVER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    #[arg(long, env = "STELLAR_HEARTBEAT_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    #[arg(long, env = "STELLAR_HEARTBEAT_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<String>,
    #[arg(long, env = "STELLAR_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[arg(long, env = "STELLAR_MAX_CONNECTIONS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    #[arg(long, env = "STELLAR_MAX_ROOMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms: Option<usize>,
    #[arg(long, env = "STELLAR_MAX_ROOMS_PER_CLIENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms_per_client: Option<usize>,
    #[arg(long, env = "STELLAR_MAX_PAYLOAD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<usize>,
    #[arg(long, env = "STELLAR_MAX_BACKPRESSURE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backpressure: Option<usize>,
    #[arg(long, env = "STELLAR_SLOW_CONSUMER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumerPolicy>,
    #[arg(long, env = "STELLAR_RATE_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    #[arg(long, env = "STELLAR_RATE_LIMIT_WINDOW")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_window: Option<String>,
    #[arg(long, env = "STELLAR_CONNECT_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[arg(long, env = "STELLAR_SHUTDOWN_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<String>,
    #[arg(long, env = "STELLAR_COMPRESSION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<bool>,
    #[arg(long, env = "STELLAR_ALLOWED_ORIGINS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    #[arg(long, env = "STELLAR_PUBLIC_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_dir: Option<PathBuf>,
    #[arg(long, env = "STELLAR_MAX_FILE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
    #[arg(long, env = "STELLAR_MAX_HEADER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    #[arg(long, env = "STELLAR_MAX_HEADERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    #[arg(long, env = "STELLAR_REDIS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[arg(long, env = "STELLAR_HISTORY_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    #[arg(long, env = "STELLAR_HISTORY_TTL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<String>,
    #[arg(long, env = "STELLAR_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "STELLAR_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, env = "STELLAR_JWT_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// Echo every WebSocket message verbatim (conformance testing only).
    #[arg(long, env = "STELLAR_ECHO")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
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
            .collect();
        for id in ids {
            let shown = match defaults.get(&id) {
                Some(toml::Value::String(s)) => s.clone(),
                Some(toml::Value::Array(a)) if a.is_empty() => "any".into(),
                Some(v) => v.to_string(),
                None if id == "tcp_port" => "port + 1".into(),
                None if matches!(id.as_str(), "help" | "version" | "config") => continue,
                None => "none".into(),
            };
            let shown = if id == "workers" {
                "0 (every core)".into()
            } else {
                shown
            };
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                a.help(format!("{help} [default: {shown}]"))
            });
        }
        cmd
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
        let dir = std::env::temp_dir().join(format!("stellar-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("stellar.toml");
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
