//! Counters, kept per worker and summed on read (SPEC §4 `stats()`).
//!
//! Each worker owns one [`WorkerStats`] on its own cache lines and is its only writer, so
//! a bump is a plain load and store, with no lock-prefixed instruction or cache-line
//! ping-pong on the message path. Readers on other threads see slightly stale values.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A counter with a single writer (its worker) and any number of readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this, so load-then-store loses nothing.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    pub total_connections: Counter,
    pub active_connections: Counter,
    pub ws_connections: Counter,
    pub tcp_connections: Counter,
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Socket writes; `messages_sent / socket_writes` is how many frames a write carries.
    pub socket_writes: Counter,
    pub rate_limited: Counter,
    pub slow_consumer_closes: Counter,
    pub slow_consumer_drops: Counter,
    /// TLS handshakes that failed or stalled past `connect_timeout` (a plaintext
    /// request on a TLS port among them).
    pub tls_handshake_failures: Counter,
    /// TLS hellos sent to a plaintext port (WebSocket/HTTP or TCP protocol).
    pub tls_on_plain_port: Counter,
    /// Rooms with at least one member on this worker.
    pub local_rooms: Counter,
}

/// A worker's counters at one instant, as served by `/stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub total_connections: u64,
    pub active_connections: u64,
    pub ws_connections: u64,
    pub tcp_connections: u64,
    pub total_messages_received: u64,
    pub total_messages_sent: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub socket_writes: u64,
    pub rate_limited: u64,
    pub slow_consumer_closes: u64,
    pub slow_consumer_drops: u64,
    pub tls_handshake_failures: u64,
    pub tls_on_plain_port: u64,
    pub local_rooms: u64,
}

impl WorkerStats {
    pub fn snapshot(&self, worker: usize) -> WorkerSnapshot {
        WorkerSnapshot {
            worker,
            total_connections: self.total_connections.get(),
            active_connections: self.active_connections.get(),
            ws_connections: self.ws_connections.get(),
            tcp_connections: self.tcp_connections.get(),
            total_messages_received: self.messages_received.get(),
            total_messages_sent: self.messages_sent.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            socket_writes: self.socket_writes.get(),
            rate_limited: self.rate_limited.get(),
            slow_consumer_closes: self.slow_consumer_closes.get(),
            slow_consumer_drops: self.slow_consumer_drops.get(),
            tls_handshake_failures: self.tls_handshake_failures.get(),
            tls_on_plain_port: self.tls_on_plain_port.get(),
            local_rooms: self.local_rooms.get(),
        }
    }
}

/// The server's counters (same keys as stelar-time-real's `getStats`, plus Stellar's).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_connections: u64,
    pub active_connections: u64,
    pub ws_connections: u64,
    pub tcp_connections: u64,
    pub total_messages_received: u64,
    pub total_messages_sent: u64,
    /// Distinct rooms across all workers.
    pub total_rooms: u64,
    /// Milliseconds since start.
    pub uptime: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Socket writes (one carries every frame queued for its connection at the time).
    pub socket_writes: u64,
    pub rate_limited: u64,
    pub slow_consumer_closes: u64,
    pub slow_consumer_drops: u64,
    /// TLS handshakes that failed or stalled (plaintext on a TLS port among them).
    pub tls_handshake_failures: u64,
    /// TLS hellos sent to a plaintext port (WebSocket/HTTP or TCP protocol).
    pub tls_on_plain_port: u64,
    pub rss_bytes: u64,
    pub workers: Vec<WorkerSnapshot>,
    /// The whole cluster, when `redis_url` is set: nodes alive, their connections, the
    /// cluster's rooms, and this node's link to Redis (`published`, `received`,
    /// `unpublished`: messages that could not reach Redis, `redisOutages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<serde_json::Value>,
}

impl Stats {
    /// Sums per-worker snapshots.
    pub fn from_workers(workers: Vec<WorkerSnapshot>, total_rooms: u64, uptime_ms: u64) -> Self {
        let mut s = Self {
            total_rooms,
            uptime: uptime_ms,
            rss_bytes: rss_bytes().unwrap_or(0),
            ..Self::default()
        };
        for w in &workers {
            s.total_connections += w.total_connections;
            s.active_connections += w.active_connections;
            s.ws_connections += w.ws_connections;
            s.tcp_connections += w.tcp_connections;
            s.total_messages_received += w.total_messages_received;
            s.total_messages_sent += w.total_messages_sent;
            s.bytes_in += w.bytes_in;
            s.bytes_out += w.bytes_out;
            s.socket_writes += w.socket_writes;
            s.rate_limited += w.rate_limited;
            s.slow_consumer_closes += w.slow_consumer_closes;
            s.slow_consumer_drops += w.slow_consumer_drops;
            s.tls_handshake_failures += w.tls_handshake_failures;
            s.tls_on_plain_port += w.tls_on_plain_port;
        }
        s.workers = workers;
        s
    }

    /// Prometheus text exposition (`GET /metrics`).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let totals: [(&str, &str, &str, u64); 16] = [
            (
                "stellar_connections_total",
                "counter",
                "Connections accepted",
                self.total_connections,
            ),
            (
                "stellar_connections_active",
                "gauge",
                "Open connections",
                self.active_connections,
            ),
            (
                "stellar_ws_connections",
                "gauge",
                "Open WebSocket connections",
                self.ws_connections,
            ),
            (
                "stellar_tcp_connections",
                "gauge",
                "Open TCP-protocol connections",
                self.tcp_connections,
            ),
            (
                "stellar_messages_received_total",
                "counter",
                "Messages received",
                self.total_messages_received,
            ),
            (
                "stellar_messages_sent_total",
                "counter",
                "Messages queued to clients",
                self.total_messages_sent,
            ),
            (
                "stellar_rooms",
                "gauge",
                "Rooms with members",
                self.total_rooms,
            ),
            (
                "stellar_bytes_in_total",
                "counter",
                "Bytes read from clients",
                self.bytes_in,
            ),
            (
                "stellar_bytes_out_total",
                "counter",
                "Bytes written to clients",
                self.bytes_out,
            ),
            (
                "stellar_socket_writes_total",
                "counter",
                "Socket writes (each carries every frame queued for its connection)",
                self.socket_writes,
            ),
            (
                "stellar_rate_limited_total",
                "counter",
                "Messages refused by rate limits",
                self.rate_limited,
            ),
            (
                "stellar_slow_consumer_closes_total",
                "counter",
                "Slow consumers closed",
                self.slow_consumer_closes,
            ),
            (
                "stellar_slow_consumer_drops_total",
                "counter",
                "Messages dropped for slow consumers",
                self.slow_consumer_drops,
            ),
            (
                "stellar_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or stalled",
                self.tls_handshake_failures,
            ),
            (
                "stellar_tls_on_plain_port_total",
                "counter",
                "TLS hellos sent to a plaintext port",
                self.tls_on_plain_port,
            ),
            (
                "stellar_rss_bytes",
                "gauge",
                "Resident set size",
                self.rss_bytes,
            ),
        ];
        for (name, kind, help, value) in totals {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out.push_str("# HELP stellar_worker_connections_active Open connections per worker\n");
        out.push_str("# TYPE stellar_worker_connections_active gauge\n");
        for w in &self.workers {
            out.push_str(&format!(
                "stellar_worker_connections_active{{worker=\"{}\"}} {}\n",
                w.worker, w.active_connections
            ));
        }
        if let Some(cluster) = &self.cluster {
            let metrics = [
                (
                    "stellar_cluster_nodes",
                    "gauge",
                    "Nodes alive in the cluster",
                    "nodes",
                ),
                (
                    "stellar_cluster_connections",
                    "gauge",
                    "Open connections in the cluster",
                    "connections",
                ),
                (
                    "stellar_cluster_rooms",
                    "gauge",
                    "Rooms with members in the cluster",
                    "totalRooms",
                ),
                (
                    "stellar_cluster_redis_connected",
                    "gauge",
                    "1 while the link to Redis is up",
                    "redisConnected",
                ),
                (
                    "stellar_cluster_published_total",
                    "counter",
                    "Messages published to Redis",
                    "published",
                ),
                (
                    "stellar_cluster_received_total",
                    "counter",
                    "Messages received from Redis",
                    "received",
                ),
                (
                    "stellar_cluster_unpublished_total",
                    "counter",
                    "Messages that could not be published (Redis down)",
                    "unpublished",
                ),
                (
                    "stellar_cluster_redis_outages_total",
                    "counter",
                    "Times the link to Redis was lost",
                    "redisOutages",
                ),
            ];
            for (name, kind, help, key) in metrics {
                let value = match cluster.get(key) {
                    Some(serde_json::Value::Bool(b)) => u64::from(*b),
                    Some(v) => v.as_u64().unwrap_or(0),
                    None => 0,
                };
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
                ));
            }
        }
        out.push_str(&format!("# HELP stellar_uptime_seconds Seconds since start\n# TYPE stellar_uptime_seconds gauge\nstellar_uptime_seconds {}\n", self.uptime / 1000));
        out
    }
}

/// This process's resident set size from `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_sum_and_render() {
        let a = WorkerStats::default();
        a.active_connections.add(3);
        a.messages_sent.add(10);
        let b = WorkerStats::default();
        b.active_connections.add(2);
        b.active_connections.sub(1);
        let stats = Stats::from_workers(vec![a.snapshot(0), b.snapshot(1)], 4, 1500);
        assert_eq!(stats.active_connections, 4);
        assert_eq!(stats.total_messages_sent, 10);
        let text = stats.to_prometheus();
        assert!(text.contains("stellar_connections_active 4\n"));
        assert!(text.contains("stellar_worker_connections_active{worker=\"1\"} 1\n"));
        assert!(stats.rss_bytes > 0);
    }
}
