//! The load generator run end to end against the real server: every message a scenario
//! sends must be counted delivered exactly once, in order, on both wires, plain and over
//! TLS, and the report must say so.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use stellar_server::{Config, Server};

/// How the generator reaches the server.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Ws,
    Tcp,
    /// `wss://`, with a certificate for `localhost` made for the test.
    Wss,
    /// The TCP protocol over TLS.
    TcpTls,
}

impl Wire {
    fn is_tcp(self) -> bool {
        matches!(self, Wire::Tcp | Wire::TcpTls)
    }

    fn is_tls(self) -> bool {
        matches!(self, Wire::Wss | Wire::TcpTls)
    }
}

/// A self-signed certificate for `localhost` and its key, written under `dir`: what the
/// server serves and the generator trusts (`--tls-ca`).
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("rcgen makes a certificate");
    std::fs::create_dir_all(dir).expect("certificate directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("certificate written");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("key written");
    (cert, key)
}

/// Runs `stellar-bench` with `args` against a fresh two-worker server and returns its
/// JSON report; panics if the run fails its own loss and error checks.
fn bench(name: &str, wire: Wire, args: &str) -> Value {
    bench_nodes(name, wire, args, 1)
}

/// A fresh two-worker server, serving `tls` (certificate, key) if given.
fn server(tls: Option<&(PathBuf, PathBuf)>) -> Server {
    Server::builder()
        .config(Config {
            host: "127.0.0.1".into(),
            port: 0,
            tcp_port: Some(0),
            workers: 2,
            rate_limit: 0,
            tls_cert: tls.as_ref().map(|(cert, _)| cert.clone()),
            tls_key: tls.as_ref().map(|(_, key)| key.clone()),
            ..Config::default()
        })
        // What the `stellar` binary registers for the echo and ack scenarios.
        .on("echo", |ctx| ctx.emit_raw("echo", &ctx.data_raw()).unwrap())
        .on_ack("echo", |ctx| Ok::<Value, _>(ctx.data().clone()))
        .start()
        .expect("server starts")
}

/// [`bench`] against `nodes` separate servers (`--server A,B`): not a cluster, so a
/// message reaches only the members on its publisher's server.
fn bench_nodes(name: &str, wire: Wire, args: &str, nodes: usize) -> Value {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tls = wire
        .is_tls()
        .then(|| certificate(&tmp.join(format!("smoke-{name}"))));
    let servers: Vec<Server> = (0..nodes).map(|_| server(tls.as_ref())).collect();
    let addresses: Vec<String> = servers
        .iter()
        .map(|s| {
            let handle = s.handle();
            let port = if wire.is_tcp() {
                handle.tcp_port()
            } else {
                handle.port()
            };
            format!("127.0.0.1:{port}")
        })
        .collect();
    // Every "node" is this process: its CPU is read once per node.
    let pids = vec![std::process::id().to_string(); nodes];
    let out = tmp.join(format!("smoke-{name}.json"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_stellar-bench"));
    command
        .args(args.split_whitespace())
        .args(["--server", &addresses.join(","), "--duration", "1"])
        .args(["--warmup", "0.5", "--proto"])
        .arg(if wire.is_tcp() { "tcp" } else { "ws" })
        .arg("--server-pid")
        .arg(pids.join(","))
        .arg("--out")
        .arg(&out);
    if let Some((cert, _)) = &tls {
        command.arg("--tls-ca").arg(cert);
    }
    let status = command.status().expect("stellar-bench runs");
    for server in servers {
        server.handle().stop();
    }
    assert!(
        status.success(),
        "{name}: stellar-bench reported loss or errors"
    );
    serde_json::from_str(&std::fs::read_to_string(&out).expect("report written"))
        .expect("report is JSON")
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in report"))
}

/// Exactly the expected deliveries, none lost, duplicated or reordered, and latencies
/// recorded for them.
fn assert_exact(report: &Value, clients: u64, deliveries_per_message: u64) {
    assert_eq!(count(report, "connected"), clients);
    let sent = count(report, "sent");
    assert!(sent > 0, "messages were sent");
    assert_eq!(
        count(report, "expected_deliveries"),
        sent * deliveries_per_message
    );
    assert_eq!(count(report, "deliveries"), sent * deliveries_per_message);
    for key in ["loss", "duplicates", "out_of_order", "errors"] {
        assert_eq!(count(report, key), 0, "{key}");
    }
    assert!(count(report, "arrived") > 0);
    assert!(
        report["latency_us"]["p50"]
            .as_f64()
            .is_some_and(|p| p > 0.0)
    );
}

/// Ten members in each of four rooms, one publisher per room.
const BROADCAST: &str = "broadcast --clients 40 --rooms 4 --publishers 4 --rate 2000";

#[test]
fn broadcast_over_websocket_is_counted_exactly() {
    let report = bench("broadcast-ws", Wire::Ws, BROADCAST);
    // Each message reaches the nine other members.
    assert_exact(&report, 40, 9);
    assert_eq!(report["tls"], false);
}

#[test]
fn broadcast_over_tcp_is_counted_exactly() {
    let report = bench("broadcast-tcp", Wire::Tcp, BROADCAST);
    assert_exact(&report, 40, 9);
}

#[test]
fn broadcast_over_wss_is_counted_exactly() {
    let report = bench("broadcast-wss", Wire::Wss, BROADCAST);
    assert_exact(&report, 40, 9);
    assert_eq!(report["tls"], true);
}

#[test]
fn broadcast_over_tcp_with_tls_is_counted_exactly() {
    let report = bench("broadcast-tcp-tls", Wire::TcpTls, BROADCAST);
    assert_exact(&report, 40, 9);
}

#[test]
fn connect_storm_over_wss_reports_server_cpu_per_connection() {
    let report = bench("connect-wss", Wire::Wss, "connect --clients 200");
    assert_eq!(count(&report, "connected"), 200);
    // The "server" is this test process (other tests included): only the presence of
    // the figure is checked, not its size.
    assert!(
        report["server_cpu_ns_per_connection"]
            .as_f64()
            .is_some_and(|ns| ns >= 0.0),
        "server CPU per connection in {report}"
    );
}

#[test]
fn large_messages_arrive_whole() {
    // 100 KiB of padding: every frame spans many reads and takes the decoder's
    // assembling path instead of the in-place one.
    let report = bench(
        "fanout-large",
        Wire::Ws,
        "fanout --clients 5 --rate 50 --payload 102400",
    );
    assert_exact(&report, 5, 4);
}

#[test]
fn acks_are_answered_to_each_caller() {
    let report = bench("ack", Wire::Ws, "ack --clients 20 --rate 2000");
    assert_exact(&report, 20, 1);
}

#[test]
fn two_servers_split_every_room() {
    // Room r's k-th member is on server (r + k) % 2 and its publisher is the first
    // member, so of the nine other members exactly four (k = 2, 4, 6, 8) share the
    // publisher's server; two servers that are not a cluster deliver those and lose the
    // five on the other one.
    let report = bench_nodes(
        "broadcast-two-servers",
        Wire::Ws,
        &format!("{BROADCAST} --max-loss 1"),
        2,
    );
    assert_eq!(count(&report, "connected"), 40);
    let sent = count(&report, "sent");
    assert!(sent > 0, "messages were sent");
    assert_eq!(count(&report, "expected_deliveries"), sent * 9);
    assert_eq!(count(&report, "deliveries"), sent * 4);
    assert_eq!(count(&report, "loss"), sent * 5);
    for key in ["duplicates", "out_of_order", "errors"] {
        assert_eq!(count(&report, key), 0, "{key}");
    }
    assert!(count(&report, "published") >= sent);
    assert!(report["server_cpu_seconds"].as_f64().is_some());
}

#[test]
fn echo_over_two_servers_is_counted_exactly() {
    let report = bench_nodes(
        "echo-two-servers",
        Wire::Ws,
        "echo --clients 20 --rate 2000",
        2,
    );
    assert_exact(&report, 20, 1);
}

/// The closed loop of `--window`: four publishers, each keeping 8 messages in flight.
const BROADCAST_WINDOW: &str = "broadcast --clients 40 --rooms 4 --publishers 4 --window 8";

#[test]
fn closed_loop_broadcast_over_websocket_is_counted_exactly() {
    let report = bench("broadcast-window-ws", Wire::Ws, BROADCAST_WINDOW);
    assert_exact(&report, 40, 9);
    assert_eq!(report["window"], 8);
    assert_eq!(report["target_rate"], 0.0, "--rate is not what paced it");
}

#[test]
fn closed_loop_broadcast_over_tcp_is_counted_exactly() {
    let report = bench("broadcast-window-tcp", Wire::Tcp, BROADCAST_WINDOW);
    assert_exact(&report, 40, 9);
}

#[test]
fn closed_loop_acks_are_answered_to_each_caller() {
    let report = bench("ack-window", Wire::Ws, "ack --clients 20 --window 4");
    assert_exact(&report, 20, 1);
    assert_eq!(report["window"], 4);
    let curve = report["latency_percentiles_us"]
        .as_array()
        .expect("percentile curve in the report");
    assert_eq!(curve.len(), 51, "p0 to p99.999, ten points per nine");
}
