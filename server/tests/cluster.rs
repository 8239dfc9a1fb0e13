//! Several nodes as one server through a real `redis-server` (SPEC §8), started per test
//! on a free port below 32768 (`scripts/test` installs it when missing). Nodes are
//! library servers in this process, and `stellar` processes where a node must die by
//! SIGKILL.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, TestServer, config, eventually};
use serde_json::{Value, json};
use stellar_server::{Config, Driver};
use tungstenite::Message;

/// How often nodes refresh their liveness in these tests: a dead node is out within 3x.
const REFRESH: Duration = Duration::from_millis(300);

/// A free port below 32768 (the clients' ephemeral ports take the range above), never
/// the same twice in this process (the servers bind with `SO_REUSEPORT`, so a port
/// handed out twice would bind twice).
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 600) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A `redis-server` of this test, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        Self::on(free_port())
    }

    fn on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it: apt-get install redis-server)");
        let deadline = Instant::now() + common::TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `INFO commandstats`: calls per command.
    fn calls(&self, command: &str) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Kills the workers' links (the RESP3 connections), as Redis drops a subscriber past
    /// its output buffer limit; how many.
    fn kill_links(&self) -> usize {
        let cli = |args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(["-p", &self.port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let links: Vec<String> = cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.contains(" resp=3"))
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(str::to_owned))
            .collect();
        for id in &links {
            cli(&["CLIENT", "KILL", "ID", id]);
        }
        links.len()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node's configuration: two workers, one cluster namespace per test.
fn node(redis: &Redis, prefix: &str, history: usize) -> Config {
    Config {
        redis_url: Some(redis.url()),
        redis_prefix: prefix.into(),
        redis_refresh: REFRESH,
        history_size: history,
        history_rooms: vec!["h:*".into()],
        presence_rooms: vec!["chat:*".into()],
        ..config(2, Driver::Auto)
    }
}

/// Waits until every node sees `n` nodes alive.
fn wait_for_nodes(nodes: &[&TestServer], n: u64) {
    eventually("every node sees the cluster", || {
        nodes.iter().all(|s| {
            let stats = s.handle.stats();
            let cluster = stats.cluster.unwrap_or_default();
            cluster["nodes"] == n && cluster["redisConnected"] == true
        })
    });
}

/// Two nodes of cluster `prefix`, once each sees the other.
fn two_nodes(redis: &Redis, prefix: &str, history: usize) -> (TestServer, TestServer) {
    let a = TestServer::with(node(redis, prefix, history));
    let b = TestServer::with(node(redis, prefix, history));
    wait_for_nodes(&[&a, &b], 2);
    (a, b)
}

fn read_events(client: &mut Client, event: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| client.recv_event(event)["data"].clone())
        .collect()
}

#[test]
fn three_nodes_deliver_each_room_message_once_in_order_to_every_member() {
    let redis = Redis::start();
    let nodes: Vec<TestServer> = (0..3)
        .map(|_| TestServer::with(node(&redis, "t1", 0)))
        .collect();
    wait_for_nodes(&nodes.iter().collect::<Vec<_>>(), 3);
    // Two members on each node; the first member of node 0 publishes.
    let mut members: Vec<Client> = nodes.iter().flat_map(|n| [n.ws(), n.ws()]).collect();
    for m in &mut members {
        m.join("room");
    }
    let ids: HashSet<String> = members.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 6, "client ids are unique across nodes");
    for n in &nodes {
        eventually("room_members agrees on every node", || {
            n.handle
                .room_members("room")
                .into_iter()
                .collect::<HashSet<_>>()
                == ids
        });
    }
    let before = redis.calls("publish");
    let (publisher, others) = members.split_first_mut().expect("members");
    for i in 0..1000 {
        publisher.send(json!({"event": "tick", "room": "room", "data": i}));
    }
    for m in others.iter_mut() {
        let got: Vec<Value> = read_events(m, "tick", 1000);
        assert_eq!(
            got,
            (0..1000).map(|i| json!(i)).collect::<Vec<_>>(),
            "{}",
            m.id
        );
    }
    // Not back to the sender, and nothing more to anyone.
    publisher.send(json!({"event": "ping"}));
    publisher.recv_event("pong");
    let publishes = redis.calls("publish") - before;
    assert!(
        (1000..1000 + 50).contains(&publishes),
        "one PUBLISH per room message whatever the members (+ membership notes): {publishes}"
    );
}

#[test]
fn to_id_broadcast_binary_and_alert_cross_nodes() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t2", 0);
    let mut on_a = a.ws();
    let mut on_b = b.ws();
    a.handle
        .to_id(&on_b.id, "direct", &json!({"hello": "b"}))
        .expect("to_id");
    assert_eq!(on_b.recv_event("direct")["data"], json!({"hello": "b"}));
    a.handle.alert(&on_b.id, "from a").expect("alert");
    assert_eq!(on_b.recv_event("alert")["data"]["message"], "from a");

    a.handle
        .broadcast_binary("blob", Bytes::from_static(&[1, 2, 3, 0, 255]))
        .expect("broadcast_binary");
    for client in [&mut on_a, &mut on_b] {
        match client.recv() {
            Message::Binary(bytes) => assert!(bytes.ends_with(&[1, 2, 3, 0, 255])),
            other => panic!("expected the binary broadcast, got {other:?}"),
        }
    }
    b.handle.broadcast("news", &json!(7)).expect("broadcast");
    assert_eq!(on_a.recv_event("news")["data"], 7);
    assert_eq!(on_b.recv_event("news")["data"], 7);

    let everyone: HashSet<String> = a.handle.clients(None).into_iter().collect();
    assert_eq!(everyone, HashSet::from([on_a.id.clone(), on_b.id.clone()]));
}

/// A `stellar` process as a cluster node, killed when dropped.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn start(redis: &Redis, prefix: &str) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_stellar"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--tcp-port", &free_port().to_string(), "--workers", "1"])
            .args(["--redis-url", &redis.url(), "--redis-prefix", prefix])
            .args(["--redis-refresh", "300ms", "--presence-rooms", "chat:*"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stellar runs");
        let deadline = Instant::now() + common::TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "stellar did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        eventually("the process is linked to Redis", || {
            common::http(
                port,
                "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .contains("\"redisConnected\":true")
        });
        Self { child, port }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_node_killed_is_out_of_every_room_within_three_refreshes_and_its_members_leave() {
    let redis = Redis::start();
    let a = TestServer::with(node(&redis, "t3", 0));
    let mut victim = Process::start(&redis, "t3");
    let mut watcher = a.ws();
    watcher.join("chat:lobby");
    let mut doomed = Client::connect(victim.port);
    doomed.join("chat:lobby");
    let joined = watcher.recv_event("presence-join");
    assert_eq!(
        joined["data"]["id"],
        doomed.id.as_str(),
        "presence crosses nodes"
    );
    eventually("the other node's member is seen", || {
        a.handle.room_members("chat:lobby").contains(&doomed.id)
    });

    let _ = victim.child.kill(); // SIGKILL: no goodbye
    let _ = victim.child.wait();
    let killed = Instant::now();
    watcher.read_timeout(REFRESH * 3 + Duration::from_secs(2));
    let left = watcher.recv_event("presence-leave");
    let within = killed.elapsed();
    assert_eq!(left["data"]["id"], doomed.id.as_str());
    assert!(
        !a.handle.room_members("chat:lobby").contains(&doomed.id),
        "still a member"
    );
    // The bound is 3x the refresh; the sweep runs on the refresh tick, so allow one
    // tick of scheduling on a loaded machine.
    assert!(within <= REFRESH * 4, "out after {within:?}");
}

#[test]
fn recovery_across_nodes_is_exact_and_says_when_it_is_not() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t4", 100);
    let mut sender = a.ws();
    sender.join_kept("h:r");
    let mut watcher = b.ws();
    watcher.join_kept("h:r");
    sender.send(json!({"event": "m", "room": "h:r", "data": 0}));
    let first = watcher.recv_event("m");
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    let offset = first["offset"].as_u64().expect("offset");
    drop(watcher);

    for i in 1..=50 {
        sender.send(json!({"event": "m", "room": "h:r", "data": i}));
    }
    eventually("the 50 are in Redis", || redis.calls("evalsha") >= 51);
    let mut back = b.ws();
    back.send(json!({"event": "join-room", "data": {"room": "h:r", "since": {"offset": offset, "epoch": epoch}}}));
    back.recv_event("joined-room");
    let got: Vec<(u64, u64)> = (0..50)
        .map(|_| {
            let m = back.recv_event("m");
            assert_eq!(m["epoch"], epoch.as_str());
            (
                m["data"].as_u64().expect("data"),
                m["offset"].as_u64().expect("offset"),
            )
        })
        .collect();
    assert_eq!(got, (1..=50).map(|i| (i, offset + i)).collect::<Vec<_>>());
    assert_eq!(
        back.recv_event("recovered")["data"],
        json!({"room": "h:r", "recovered": true, "offset": offset + 50, "epoch": epoch})
    );

    back.send(
        json!({"event": "recover", "data": {"room": "h:r", "offset": offset, "epoch": "stale"}}),
    );
    let answer = back.recv_event("recovered");
    assert_eq!(answer["data"]["recovered"], false);
    assert_eq!(answer["data"]["offset"], offset + 50);
}

#[test]
fn a_short_history_in_the_cluster_says_not_recovered() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t5", 10);
    let mut sender = a.ws();
    sender.join_kept("h:r");
    let mut watcher = b.ws();
    watcher.join_kept("h:r");
    sender.send(json!({"event": "m", "room": "h:r", "data": 0}));
    let first = watcher.recv_event("m");
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    drop(watcher);
    for i in 1..=50 {
        sender.send(json!({"event": "m", "room": "h:r", "data": i}));
    }
    // The sender's own messages are not sent back to it; a ping makes sure they left.
    sender.send(json!({"event": "ping"}));
    sender.recv_event("pong");
    eventually("the 50 are in Redis", || redis.calls("evalsha") >= 51);
    let mut back = b.ws();
    back.join_kept("h:r");
    back.send(json!({"event": "recover", "data": {"room": "h:r", "offset": 1, "epoch": epoch}}));
    let answer = back.recv_event("recovered");
    assert_eq!(
        answer["data"],
        json!({"room": "h:r", "recovered": false, "offset": 51, "epoch": epoch})
    );
}

#[test]
fn redis_down_keeps_local_delivery_counts_the_loss_and_recovery_says_so() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t6", 100);
    let mut sender = a.ws();
    let mut local = a.ws();
    let mut remote = b.ws();
    for c in [&mut sender, &mut local, &mut remote] {
        c.join("p");
        c.join_kept("h:r");
    }
    sender.send(json!({"event": "m", "room": "h:r", "data": 0}));
    let first = remote.recv_event("m");
    assert_eq!(local.recv_event("m")["offset"], first["offset"]);
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();

    let port = redis.port;
    redis.kill();
    eventually("both nodes notice", || {
        [&a, &b]
            .iter()
            .all(|s| s.handle.stats().cluster.unwrap_or_default()["redisConnected"] == false)
    });
    let unpublished_before = a.handle.stats().cluster.unwrap_or_default()["unpublished"]
        .as_u64()
        .unwrap_or(0);
    for i in 1..=20 {
        sender.send(json!({"event": "m", "room": "p", "data": i}));
        sender.send(json!({"event": "m", "room": "h:r", "data": i}));
    }
    // Local delivery never stops, for both rooms (history messages without a position,
    // handed back by the cluster thread, so the two rooms interleave in any order).
    let (mut plain, mut kept) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        let m = local.recv_event("m");
        if m["room"] == "p" {
            plain.push(m["data"].clone());
        } else {
            assert!(m.get("offset").is_none(), "no position without Redis: {m}");
            kept.push(m["data"].clone());
        }
    }
    let expected: Vec<Value> = (1..=20).map(|i| json!(i)).collect();
    assert_eq!((plain, kept), (expected.clone(), expected));
    eventually("the loss is counted", || {
        a.handle.stats().cluster.unwrap_or_default()["unpublished"]
            .as_u64()
            .unwrap_or(0)
            == unpublished_before + 40
    });

    let _redis = Redis::on(port); // back, empty
    wait_for_nodes(&[&a, &b], 2);
    // Cross-node delivery resumes.
    let deadline = Instant::now() + common::TIMEOUT;
    remote.read_timeout(Duration::from_millis(300));
    'resumed: loop {
        assert!(
            Instant::now() < deadline,
            "cross-node delivery did not resume"
        );
        sender.send(json!({"event": "after", "room": "p", "data": 1}));
        loop {
            match remote.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v["event"] == "after" {
                        break 'resumed;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    remote.read_timeout(common::TIMEOUT);
    // The remote member missed the outage's messages of the history room: asked, the
    // cluster says it cannot recover them (the epoch is new), never a silent gap.
    remote.send(
        json!({"event": "recover", "data": {"room": "h:r", "offset": 1, "epoch": epoch},
        "_ackName": "recover", "_correlationId": "r#1"}),
    );
    let reply = loop {
        let v = remote.recv_json();
        if v["_isAck"] == true {
            break v;
        }
    };
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    assert_ne!(reply["data"]["epoch"], epoch.as_str());
}

#[test]
fn presence_and_room_view_are_cluster_wide() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t7", 0);
    let mut watcher = a.ws();
    watcher.join("chat:1");
    let mut leaver = b.ws();
    leaver.join("chat:1");
    let mut quitter = b.ws();
    quitter.join("chat:1");
    for joined in [&leaver.id, &quitter.id] {
        assert_eq!(
            watcher.recv_event("presence-join")["data"]["id"],
            joined.as_str()
        );
    }
    eventually("the replica has b's members", || {
        a.handle.room_members("chat:1").len() == 3
    });
    let view = watcher.request("room-view", json!("chat:1"), "v#1");
    assert_eq!(view["data"]["membersCount"], 3, "{view}");

    leaver.send(json!({"event": "leave-room", "data": "chat:1"}));
    assert_eq!(
        watcher.recv_event("presence-leave")["data"],
        json!({"room": "chat:1", "id": leaver.id, "userId": null})
    );
    let quitter_id = quitter.id.clone();
    drop(quitter);
    assert_eq!(
        watcher.recv_event("presence-leave")["data"]["id"],
        quitter_id.as_str()
    );
    eventually("the replica follows", || {
        a.handle.room_members("chat:1") == vec![watcher.id.clone()]
    });
    assert_eq!(a.handle.rooms(), b.handle.rooms());
}

#[test]
fn past_redis_max_pending_messages_stay_local_and_are_counted_exactly() {
    let redis = Redis::start();
    let a = TestServer::with(Config {
        redis_max_pending: 1,
        ..node(&redis, "t8", 0)
    });
    let b = TestServer::with(node(&redis, "t8", 0));
    wait_for_nodes(&[&a, &b], 2);
    let mut sender = a.ws();
    let mut local = a.ws();
    let mut remote = b.ws();
    for c in [&mut sender, &mut local, &mut remote] {
        c.join("p");
    }
    for i in 0..1000 {
        sender.send(json!({"event": "m", "room": "p", "data": i}));
    }
    let got: Vec<Value> = read_events(&mut local, "m", 1000);
    assert_eq!(got, (0..1000).map(|i| json!(i)).collect::<Vec<_>>());
    let arrived = remote.read_until_quiet(Duration::from_millis(500)).len() as u64;
    let cluster = a.handle.stats().cluster.unwrap_or_default();
    let unpublished = cluster["unpublished"].as_u64().expect("unpublished");
    assert!(
        unpublished > 0,
        "a burst of 1000 past a bound of 1: {cluster}"
    );
    assert_eq!(
        arrived + unpublished,
        1000,
        "every message delivered or counted"
    );
}

#[test]
fn a_live_node_taken_for_dead_registers_its_members_again() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t9", 0);
    let mut watcher = b.ws();
    watcher.join("chat:x");
    let mut member = a.ws();
    member.join("chat:x");
    watcher.recv_event("presence-join");
    let node = a.handle.stats().cluster.unwrap_or_default()["node"]
        .as_str()
        .expect("node id")
        .to_owned();
    // As if `a` had stalled past its liveness: its entry set long expired, until `b`
    // sweeps it before `a`'s own refresh puts it back.
    watcher.read_timeout(Duration::from_millis(5));
    let deadline = Instant::now() + common::TIMEOUT;
    let left = loop {
        assert!(Instant::now() < deadline, "b never took a for dead");
        let status = Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "HSET",
                "t9:nodes",
                &node,
                "1",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success());
        if let Ok(Message::Text(t)) = watcher.ws.read() {
            break serde_json::from_str::<Value>(&t).expect("JSON");
        }
    };
    assert_eq!(left["event"], "presence-leave", "{left}");
    eventually("a registers again and b sees its member", || {
        b.handle.room_members("chat:x").contains(&member.id)
    });
    // And the link goes on: a message from a's member reaches b's watcher.
    watcher.read_timeout(common::TIMEOUT);
    member.send(json!({"event": "m", "room": "chat:x", "data": 1}));
    assert_eq!(watcher.recv_event("m")["data"], 1);
}

#[test]
fn a_dropped_subscription_catches_history_rooms_up_and_plain_rooms_resume() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "t10", 100);
    let mut sender = a.ws();
    sender.join_kept("h:r");
    sender.join("plain");
    let mut watcher = b.ws();
    watcher.join_kept("h:r");
    watcher.join("plain");
    sender.send(json!({"event": "m", "room": "h:r", "data": 0}));
    let first = watcher.recv_event("m")["offset"].as_u64().expect("offset");

    // Every worker's link drops (both nodes' subscriptions among them); the messages
    // sent at once reach Redis while node b is not subscribed.
    assert!(redis.kill_links() >= 2, "each node has its links");
    for i in 1..=20 {
        sender.send(json!({"event": "m", "room": "h:r", "data": i}));
    }
    let got: Vec<(u64, u64)> = (1..=20)
        .map(|_| {
            let m = watcher.recv_event("m");
            (
                m["data"].as_u64().expect("data"),
                m["offset"].as_u64().expect("offset"),
            )
        })
        .collect();
    assert_eq!(
        got,
        (1..=20).map(|i| (i, first + i)).collect::<Vec<_>>(),
        "once each, in order"
    );
    // Caught up, so subscribed again: plain messages cross again.
    sender.send(json!({"event": "p", "room": "plain", "data": "again"}));
    assert_eq!(watcher.recv_event("p")["data"], "again");
    let more = watcher.read_until_quiet(Duration::from_millis(300));
    assert!(more.is_empty(), "nothing twice: {more:?}");
}
