//! `stellar-bench`: a thread-per-core load generator for Stellar and any server that
//! speaks its envelope (SPEC §9). Every speed claim of the project comes from here.
//!
//! One generator thread per `--cpus` entry, pinned, each with its own io_uring (monoio)
//! loop holding its share of the clients. Connections come from 127.0.0.1, .2, ... so
//! more than 64 k of them fit. Publishers are open-loop; latency is measured from the
//! intended send time; warm-up is excluded; the run is bounded by `--duration`. With
//! `--tls-ca` every connection speaks TLS (`wss://`). With several `--server` addresses
//! (the nodes of one cluster) the clients are dealt over them so that every room has
//! members, and the publishers, on every node.

mod broker;
mod conn;
mod pacer;
mod packets;
mod report;
mod scenario;
mod socketio;
mod stall;
mod tls;
mod window;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use conn::Proto;
use report::{Percentiles, Report};
use scenario::{Counters, Run, Scenario};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for Stellar and peer servers.
#[derive(Debug, Parser)]
#[command(name = "stellar-bench", version)]
struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address (host:port): the WebSocket port, or the TCP port with `--proto tcp`.
    /// A comma-separated list names the nodes of one cluster: the clients are dealt over
    /// them (see `assign_servers`).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3000")]
    server: Vec<String>,
    #[arg(long, value_enum, default_value = "ws")]
    proto: Proto,
    /// PEM file of the certificates to trust (the server's self-signed certificate will
    /// do): every connection then speaks TLS (`wss://`, or TLS on the TCP port), with a
    /// full handshake each. Unset = plaintext.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Offer permessage-deflate in every WebSocket upgrade and inflate what the server
    /// sends compressed (the client's own messages go out plain, which the RFC allows).
    #[arg(long)]
    deflate: bool,
    /// Fill `--payload` with telemetry-like text (readings with varying digits) instead
    /// of one repeated byte: what compression should be measured on.
    #[arg(long)]
    telemetry: bool,
    /// Server name sent in SNI and checked against the certificate (with `--tls-ca`).
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Cores to run generator threads on, e.g. `1` or `0,1`.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    cpus: Vec<usize>,
    /// Clients (broadcast: rooms × members).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Rooms (broadcast); fanout uses one.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Publishing clients (broadcast).
    #[arg(long, default_value_t = 100)]
    publishers: usize,
    /// Target messages per second over all publishers (echo/ack: over all clients).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Padding bytes added to each message.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Connections opened at once per thread (connect, idle).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// idle: each client joins its room (one of `--rooms`) once connected, then idles,
    /// as a spectator does; without it an idle client sends nothing after the upgrade.
    #[arg(long)]
    join: bool,
    /// Source addresses start at 127.0.0.(1 + this) (vary it between back-to-back runs).
    #[arg(long, default_value_t = 0)]
    source_offset: u32,
    /// Seed for the room assignment.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// PID of the server, to read its CPU time and RSS from /proc; a comma-separated
    /// list (one per node) is summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<String>,
    /// Redis between the nodes of a cluster (`host:port`): its `INFO commandstats` is
    /// read at the window's start and end, for the broker's commands per message.
    #[arg(long)]
    broker: Option<String>,
    /// PID of the broker (`redis-server`), for its CPU time over the window.
    #[arg(long)]
    broker_pid: Option<String>,
    /// Label of the server in reports.
    #[arg(long, default_value = "stellar")]
    label: String,
    /// Where to write the JSON result (an SVG plot is written beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit non-zero when the loss ratio exceeds this.
    #[arg(long, default_value_t = 0.0)]
    max_loss: f64,
    /// Exit non-zero when errors exceed this.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
    /// Closed loop: each sender keeps this many messages in flight and sends the next
    /// when one of its own has reached every receiver (broadcast, fanout, binary: the
    /// room's other members; echo, ack: itself). `--rate` is then ignored.
    #[arg(long)]
    window: Option<usize>,
    /// Stop the server (SIGSTOP to each `--server-pid`) for `--stall-for` seconds once
    /// every this many seconds through the measured window, then continue it (SIGCONT):
    /// every server meets the same stalls, so the tail shows how each recovers from one.
    #[arg(long, requires = "server_pid")]
    stall_every: Option<f64>,
    /// How long each injected stall lasts, in seconds.
    #[arg(long, default_value_t = 0.04)]
    stall_for: f64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    raise_fd_limit();
    let mut servers = Vec::with_capacity(args.server.len());
    for name in &args.server {
        match name.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(a) => servers.push(a),
            None => {
                eprintln!("stellar-bench: cannot resolve {name}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if args.proto == Proto::Socketio && args.scenario == Scenario::Binary {
        eprintln!("stellar-bench: --proto socketio does not carry the binary scenario");
        return std::process::ExitCode::from(2);
    }
    let tls = match &args.tls_ca {
        None => None,
        Some(ca) => match tls::Connector::from_ca(ca, &args.tls_name) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("stellar-bench: --tls-ca {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let stalls = match args.stall_every {
        None => None,
        Some(every) => match stall::Plan::new(&args.server_pid, every, args.stall_for) {
            Ok(plan) => Some(plan),
            Err(e) => {
                eprintln!("stellar-bench: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let report = run(&args, servers, tls, stalls);
    report.print();
    if let Some(out) = &args.out
        && let Err(e) = report.write_json(out)
    {
        eprintln!("stellar-bench: writing {}: {e}", out.display());
    }
    let failed = report.loss_ratio > args.max_loss
        || report.errors + report.connect_errors > args.max_errors;
    if failed {
        eprintln!("stellar-bench: loss or errors over the threshold");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

type EventLoop = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// The generator thread's event loop: io_uring with deferred task work where the kernel
/// has it (6.1+), else plain io_uring, else epoll.
///
/// By default io_uring signals a thread each time one of its sockets becomes readable
/// (an inter-processor interrupt when that thread runs on another core), and on loopback
/// that signal is sent, and paid for, by the *server* writing to the socket. Deferred
/// task work (`DEFER_TASKRUN` with `SINGLE_ISSUER`) lets completions wait until the
/// generator next asks for them, so the server is charged only the cost of its send, as
/// it would be with clients on another machine, and the generator does fewer, larger
/// batches.
fn event_loop() -> std::io::Result<EventLoop> {
    let build = |ring: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .with_entries(4096)
            .build()
    };
    let mut deferred = io_uring::IoUring::builder();
    deferred
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    build(deferred).or_else(|_| build(io_uring::IoUring::builder()))
}

/// Deals clients into rooms reproducibly from the seed.
fn assign_rooms(clients: usize, rooms: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..clients).collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut room_of = vec![0; clients];
    for (slot, client) in order.into_iter().enumerate() {
        room_of[client] = slot % rooms.max(1);
    }
    room_of
}

/// Deals clients over `servers` nodes so that every room spans them all: the k-th member
/// of room r (in client order) goes to node (r + k) % servers. A room's publisher is its
/// first member, so the publishers are spread over the nodes as evenly as the rooms, and
/// each room's members as evenly as its size allows. With one room (echo, ack, fanout)
/// client i goes to node i % servers; with one node, everyone to it.
fn assign_servers(room_of: &[usize], servers: usize) -> Vec<usize> {
    let rooms = room_of.iter().max().map_or(0, |r| r + 1);
    let mut members = vec![0usize; rooms];
    room_of
        .iter()
        .map(|&room| {
            let k = members[room];
            members[room] += 1;
            (room + k) % servers.max(1)
        })
        .collect()
}

fn run(
    args: &Args,
    servers: Vec<SocketAddr>,
    tls: Option<tls::Connector>,
    stalls: Option<stall::Plan>,
) -> Report {
    let rooms = match args.scenario {
        Scenario::Fanout => 1,
        Scenario::Broadcast | Scenario::Binary => args.rooms.max(1),
        _ => 1,
    };
    let publishers = match args.scenario {
        Scenario::Fanout => 1,
        Scenario::Broadcast | Scenario::Binary => args.publishers.clamp(1, rooms),
        _ => 0,
    };
    let room_of = assign_rooms(args.clients, rooms, args.seed);
    let closed_loop = window::Window::plan(args.window, args.scenario, &room_of, rooms, publishers);
    let window = closed_loop.as_ref().map(|w| w.size as usize);
    let run = Arc::new(Run {
        scenario: args.scenario,
        proto: args.proto,
        server_of: assign_servers(&room_of, servers.len()),
        servers,
        tls,
        deflate: args.deflate,
        telemetry: args.telemetry,
        clients: args.clients,
        rooms,
        publishers,
        rate: args.rate,
        payload: args.payload,
        concurrency: args.concurrency,
        idle_join: args.join,
        source_offset: args.source_offset,
        room_of,
        start: Instant::now(),
        go: AtomicBool::new(false),
        go_at: AtomicU64::new(0),
        window: (AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)),
        done: AtomicBool::new(false),
        counters: Counters::default(),
        close_codes: Mutex::default(),
        sockets: Mutex::default(),
        closed_loop,
    });
    let rss_before = report::rss_bytes_of(&args.server_pid);
    let gen_cpu_before = report::cpu_seconds("self").unwrap_or(0.0);
    let storm_server_cpu_before = report::cpu_seconds_of(&args.server_pid);
    let threads: Vec<_> = args
        .cpus
        .iter()
        .enumerate()
        .map(|(t, &cpu)| {
            let run = Arc::clone(&run);
            let count = args.cpus.len();
            std::thread::spawn(move || generator_thread(run, t, count, cpu))
        })
        .collect();

    // Phase 1: connect (and join) everyone.
    let bar = ProgressBar::new(args.clients as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("connecting");
    let storm_start = Instant::now();
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = &run.counters;
        let settled =
            c.connected.load(Ordering::Relaxed) + c.connect_errors.load(Ordering::Relaxed);
        bar.set_position(settled);
        if settled >= args.clients as u64 || Instant::now() > connect_deadline {
            break;
        }
        // A storm of 5 000 takes about a fifth of a second: a coarser poll would
        // quantise its rate.
        std::thread::sleep(Duration::from_millis(1));
    }
    let storm_seconds = storm_start.elapsed().as_secs_f64();
    let storm_server_cpu = match (
        storm_server_cpu_before,
        report::cpu_seconds_of(&args.server_pid),
    ) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let storm_gen_cpu = report::cpu_seconds("self").unwrap_or(0.0) - gen_cpu_before;

    // Phase 2: run, measuring only the window after the warm-up.
    let go = run.now_ns() + 50_000_000;
    let from = go + (args.warmup * 1e9) as u64;
    let until = from + (args.duration * 1e9) as u64;
    run.go_at.store(go, Ordering::Release);
    run.window.0.store(from, Ordering::Release);
    run.window.1.store(until, Ordering::Release);
    run.go.store(true, Ordering::Release);
    let measuring = matches!(args.scenario, Scenario::Connect);
    let wait = |ns: u64| {
        let now = run.now_ns();
        if ns > now {
            std::thread::sleep(Duration::from_nanos(ns - now));
        }
    };
    bar.set_length((args.warmup + args.duration).ceil() as u64);
    bar.set_position(0);
    bar.set_message(if measuring { "holding" } else { "running" });
    let mut server_cpu = (None, None);
    let mut gen_window_cpu = (0.0, 0.0);
    let mut rss_after = None;
    let mut segments = None;
    let mut broker_window = (None, None);
    let mut broker_cpu = (None, None);
    // Run-clock nanoseconds as an instant.
    let instant = |ns: u64| Instant::now() + Duration::from_nanos(ns.saturating_sub(run.now_ns()));
    let stalls = stalls
        .filter(|_| !measuring)
        .map(|plan| plan.inject(instant(from), instant(until)));
    if !measuring {
        wait(from);
        server_cpu.0 = report::cpu_seconds_of(&args.server_pid);
        broker_window.0 = args.broker.as_deref().and_then(read_broker);
        broker_cpu.0 = args.broker_pid.as_deref().and_then(report::cpu_seconds);
        gen_window_cpu.0 = report::cpu_seconds("self").unwrap_or(0.0);
        let sockets = run.sockets.lock().map(|s| s.clone()).unwrap_or_default();
        let segments_before = packets::data_segments_in(&sockets);
        while run.now_ns() < until {
            bar.set_position(
                ((run.now_ns().saturating_sub(go)) / 1_000_000_000).min(bar.length().unwrap_or(0)),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server_cpu.1 = report::cpu_seconds_of(&args.server_pid);
        broker_window.1 = args.broker.as_deref().and_then(read_broker);
        broker_cpu.1 = args.broker_pid.as_deref().and_then(report::cpu_seconds);
        gen_window_cpu.1 = report::cpu_seconds("self").unwrap_or(0.0);
        segments = Some(packets::received_between(
            &segments_before,
            &packets::data_segments_in(&sockets),
        ));
        rss_after = report::rss_bytes_of(&args.server_pid);
        // Let deliveries in flight arrive.
        std::thread::sleep(Duration::from_secs(2));
    }
    bar.finish_and_clear();
    run.done.store(true, Ordering::Release);
    let mut latency = scenario::new_histogram();
    let mut series = scenario::Series::default();
    for t in threads {
        if let Ok((h, s)) = t.join() {
            let _ = latency.add(&h);
            series.add(&s);
        }
    }
    let gen_cpu = report::cpu_seconds("self").unwrap_or(0.0) - gen_cpu_before;

    let c = &run.counters;
    let seconds = if measuring {
        storm_seconds
    } else {
        args.duration
    };
    let delivered = c.delivered.load(Ordering::Relaxed);
    let expected = c.expected.load(Ordering::Relaxed);
    let sent = c.sent.load(Ordering::Relaxed);
    let arrived = c.arrived.load(Ordering::Relaxed);
    let loss = expected.saturating_sub(delivered);
    // The connect scenario measures the storm: the server's CPU from the first connect
    // until every client is in.
    let server_cpu_seconds = match server_cpu {
        _ if measuring => storm_server_cpu,
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let connected = c.connected.load(Ordering::Relaxed);
    let report = Report {
        label: args.label.clone(),
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        proto: format!("{:?}", args.proto).to_lowercase(),
        tls: args.tls_ca.is_some(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        clients: args.clients,
        rooms,
        publishers,
        target_rate: if window.is_some() { 0.0 } else { args.rate },
        payload: args.payload,
        seconds,
        connected,
        connect_errors: c.connect_errors.load(Ordering::Relaxed),
        sent,
        published: c.published.load(Ordering::Relaxed),
        expected_deliveries: expected,
        deliveries: delivered,
        deliveries_per_sec: delivered as f64 / seconds,
        messages_per_sec: sent as f64 / seconds,
        arrived,
        throughput_per_sec: arrived as f64 / seconds,
        loss,
        loss_ratio: if expected == 0 {
            0.0
        } else {
            loss as f64 / expected as f64
        },
        duplicates: c.duplicates.load(Ordering::Relaxed),
        out_of_order: c.out_of_order.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        close_codes: run
            .close_codes
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        connections_per_sec: if measuring {
            connected as f64 / storm_seconds
        } else {
            0.0
        },
        latency_us: Percentiles::of(&latency),
        server_cpu_seconds,
        server_cpu_share: server_cpu_seconds.map(|s| s / seconds),
        server_cpu_ns_per_delivery: server_cpu_seconds
            .filter(|_| arrived > 0)
            .map(|s| s * 1e9 / arrived as f64),
        server_cpu_ns_per_connection: server_cpu_seconds
            .filter(|_| measuring && connected > 0)
            .map(|s| s * 1e9 / connected as f64),
        server_rss_bytes_per_connection: match (rss_before, rss_after) {
            (Some(a), Some(b)) if args.scenario == Scenario::Idle && connected > 0 => {
                Some((b as f64 - a as f64) / connected as f64)
            }
            _ => None,
        },
        server_rss_bytes: rss_after,
        generator_cpu_seconds: gen_cpu,
        generator_cpu_share: if measuring {
            Some(storm_gen_cpu / (storm_seconds * args.cpus.len() as f64))
        } else {
            Some((gen_window_cpu.1 - gen_window_cpu.0) / (seconds * args.cpus.len() as f64))
        },
        generator_threads: args.cpus.len(),
        server_packets_per_1000_deliveries: segments
            .filter(|_| arrived > 0)
            .map(|n| n as f64 * 1000.0 / arrived as f64),
        injected_stalls: stalls.and_then(|handle| handle.join().ok()),
        broker: match broker_window {
            (Some(before), Some(after)) => Some(report::BrokerUse::of(
                before.until(&after),
                match broker_cpu {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                },
                sent,
            )),
            _ => None,
        },
        window,
        latency_percentiles_us: report::percentile_curve(&latency),
        late_by_100ms: series,
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    if let Some(out) = &args.out {
        let svg = out.with_extension("svg");
        let title = format!("{} {} latency", report.label, report.scenario);
        if let Err(e) = report::write_svg(&svg, &title, &latency) {
            eprintln!("stellar-bench: plotting {}: {e}", svg.display());
        }
    }
    report
}

/// The broker's counts now, or `None` (said on stderr) if it cannot be read.
fn read_broker(addr: &str) -> Option<broker::Commandstats> {
    broker::read(addr)
        .inspect_err(|e| eprintln!("stellar-bench: --broker {addr}: {e}"))
        .ok()
}

/// One pinned generator thread running clients `t, t + count, t + 2·count, ...`.
fn generator_thread(
    run: Arc<Run>,
    t: usize,
    count: usize,
    cpu: usize,
) -> (hdrhistogram::Histogram<u64>, scenario::Series) {
    if let Some(core) =
        core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == cpu))
    {
        core_affinity::set_for_current(core);
    }
    let tally = scenario::Tally::new();
    let mut rt = match event_loop() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stellar-bench: thread {t}: no event loop: {e}");
            return (scenario::new_histogram(), scenario::Series::default());
        }
    };
    let l = Rc::clone(&tally);
    let pacer = Rc::new(pacer::Pacer::default());
    let totals = Arc::clone(&run);
    rt.block_on(async move {
        monoio::spawn(Rc::clone(&pacer).run(Arc::clone(&run)));
        let phases = Rc::new(scenario::Phases::default());
        monoio::spawn(Rc::clone(&phases).watch(Arc::clone(&run)));
        let mine: Vec<usize> = (t..run.clients).step_by(count).collect();
        // Open connections `concurrency` at a time, so a storm does not overflow the
        // server's accept backlog.
        let slots = scenario::Slots::new(run.concurrency);
        for index in mine {
            let slot = slots.take().await;
            monoio::spawn(scenario::client_with_slot(
                Arc::clone(&run),
                index,
                Rc::clone(&l),
                slot,
                Rc::clone(&pacer),
                Rc::clone(&phases),
            ));
        }
        phases.done.wait().await;
        // Give clients a moment to send their closes.
        monoio::time::sleep(Duration::from_millis(100)).await;
    });
    tally.finish(&totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_room_has_members_and_publishers_on_every_server() {
        let room_of = assign_rooms(1000, 100, 1);
        let server_of = assign_servers(&room_of, 2);
        let mut per_room = vec![[0usize; 2]; 100];
        let mut publishers = [0usize; 2];
        for (client, (&room, &server)) in room_of.iter().zip(&server_of).enumerate() {
            if room_of.iter().position(|r| *r == room) == Some(client) {
                publishers[server] += 1;
            }
            per_room[room][server] += 1;
        }
        assert!(
            per_room.iter().all(|split| *split == [5, 5]),
            "{per_room:?}"
        );
        assert_eq!(publishers, [50, 50]);
    }

    #[test]
    fn one_room_is_dealt_round_robin_and_one_server_takes_all() {
        let one_room = assign_rooms(10, 1, 7);
        assert_eq!(
            assign_servers(&one_room, 3),
            (0..10).map(|i| i % 3).collect::<Vec<_>>()
        );
        assert!(
            assign_servers(&assign_rooms(500, 50, 3), 1)
                .iter()
                .all(|s| *s == 0)
        );
    }
}
