//! Room history, recovery and presence on a single node (SPEC §8), with real clients:
//! offsets on relayed events, `recover` and `join-room` with `since` answering exactly
//! what was missed or `recovered:false`, never a silent gap, and `presence-join` /
//! `presence-leave`. The cluster side is `cluster.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Client, TestServer, config};
use serde_json::{Value, json};
use stellar_server::{Config, Driver};

fn history_config(size: usize) -> Config {
    Config {
        history_size: size,
        presence_rooms: vec!["chat:*".into()],
        ..config(2, Driver::Auto)
    }
}

/// Sends `n` room events `m` numbered from `from` from `sender`, and returns once the
/// server has routed them (the pong to a ping sent after them comes after them): they
/// are in the room's history before anyone joins or recovers. Without it a client on
/// the other worker could join first (seen once under the full suite's load).
fn publish(sender: &mut Client, room: &str, from: u64, n: u64) {
    for i in from..from + n {
        sender.send(json!({"event": "m", "room": room, "data": i}));
    }
    sender.send(json!({"event": "ping"}));
    sender.recv_event("pong");
}

/// Reads `n` room events `m`, returning their (data, offset), checking one epoch.
fn read(client: &mut Client, n: usize, epoch: &str) -> Vec<(u64, u64)> {
    (0..n)
        .map(|_| {
            let msg = client.recv_event("m");
            assert_eq!(msg["epoch"], epoch, "{msg}");
            (
                msg["data"].as_u64().expect("data"),
                msg["offset"].as_u64().expect("offset"),
            )
        })
        .collect()
}

/// A member `watcher` receives one message and returns its (offset, epoch).
fn position(sender: &mut Client, watcher: &mut Client, room: &str) -> (u64, String) {
    sender.send(json!({"event": "m", "room": room, "data": 0}));
    let msg = watcher.recv_event("m");
    (
        msg["offset"].as_u64().expect("offset"),
        msg["epoch"].as_str().expect("epoch").to_owned(),
    )
}

#[test]
fn a_client_back_from_a_disconnect_recovers_exactly_what_it_missed() {
    let server = TestServer::with(history_config(100));
    let mut sender = server.ws();
    sender.join_kept("r");
    let mut gone = server.ws();
    gone.join_kept("r");
    let (offset, epoch) = position(&mut sender, &mut gone, "r");
    assert_eq!(offset, 1);
    drop(gone);

    publish(&mut sender, "r", 1, 50);
    // Back, joining and recovering in one step.
    let mut back = server.ws();
    back.send(json!({"event": "join-room", "data": {"room": "r", "since": {"offset": offset, "epoch": epoch}}}));
    assert_eq!(back.recv_event("joined-room")["data"], "r");
    let got = read(&mut back, 50, &epoch);
    let expected: Vec<(u64, u64)> = (1..=50).map(|i| (i, i + 1)).collect();
    assert_eq!(got, expected, "all 50, in order, with their offsets");
    let answer = back.recv_event("recovered");
    assert_eq!(
        answer["data"],
        json!({"room": "r", "recovered": true, "offset": 51, "epoch": epoch})
    );

    // The `recover` verb, as a request, for a member.
    let mut member = server.ws();
    member.join_kept("r");
    publish(&mut sender, "r", 51, 3);
    let live = read(&mut member, 3, &epoch);
    assert_eq!(live, vec![(51, 52), (52, 53), (53, 54)]);
    member.send(
        json!({"event": "recover", "data": {"room": "r", "offset": 49, "epoch": epoch},
        "_ackName": "recover", "_correlationId": "rc#1"}),
    );
    // 50 and 51 (offsets) it never had; 52.. it got live.
    let got = read(&mut member, 2, &epoch);
    assert_eq!(got, vec![(49, 50), (50, 51)]);
    let reply = member.recv_json();
    assert_eq!(reply["_isAck"], true, "{reply}");
    assert_eq!(
        reply["data"],
        json!({"room": "r", "recovered": true, "offset": 54, "epoch": epoch})
    );
}

#[test]
fn a_client_that_drops_before_any_message_recovers_from_where_it_joined() {
    let server = TestServer::with(history_config(100));
    let mut sender = server.ws();
    sender.join_kept("quiet");
    publish(&mut sender, "quiet", 0, 3);
    // Joined after 3 messages, dropped before a fourth: the join told it where it stood.
    let mut gone = server.ws();
    let start = gone.join_kept("quiet");
    assert_eq!(start["offset"], 3, "{start}");
    drop(gone);
    publish(&mut sender, "quiet", 3, 5);
    let mut back = server.ws();
    back.send(json!({"event": "join-room", "data": {"room": "quiet", "since": {"offset": start["offset"], "epoch": start["epoch"]}}}));
    back.recv_event("joined-room");
    let epoch = start["epoch"].as_str().expect("epoch");
    let got = read(&mut back, 5, epoch);
    assert_eq!(got, (3..8).map(|i| (i, i + 1)).collect::<Vec<_>>());
    assert_eq!(back.recv_event("recovered")["data"]["recovered"], true);
}

#[test]
fn a_position_older_than_the_history_or_of_another_epoch_is_told_not_recovered() {
    let server = TestServer::with(history_config(10));
    let mut sender = server.ws();
    sender.join_kept("r");
    let mut watcher = server.ws();
    watcher.join_kept("r");
    let (offset, epoch) = position(&mut sender, &mut watcher, "r");
    publish(&mut sender, "r", 1, 50);
    read(&mut watcher, 50, &epoch);

    let mut back = server.ws();
    back.send(json!({"event": "join-room", "data": {"room": "r", "since": {"offset": offset, "epoch": epoch}}}));
    back.recv_event("joined-room");
    let answer = back.recv_event("recovered");
    assert_eq!(
        answer["data"],
        json!({"room": "r", "recovered": false, "offset": 51, "epoch": epoch}),
        "only 10 of the 50 missed are kept: no partial recovery passed off as whole"
    );

    back.send(
        json!({"event": "recover", "data": {"room": "r", "offset": 50, "epoch": "not-the-epoch"}}),
    );
    let answer = back.recv_event("recovered");
    assert_eq!(answer["data"]["recovered"], false);
    assert_eq!(answer["data"]["epoch"], epoch.as_str());

    // Live delivery after a failed recovery goes on.
    publish(&mut sender, "r", 100, 1);
    assert_eq!(read(&mut back, 1, &epoch), vec![(100, 52)]);
}

#[test]
fn joining_with_since_while_messages_flow_has_no_gap_and_no_duplicate() {
    let server = TestServer::with(history_config(100_000));
    let mut watcher = server.ws();
    watcher.join_kept("busy");
    let handle = server.handle.clone();
    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    let publisher = std::thread::spawn(move || {
        let mut i = 0u64;
        while flag.load(Ordering::Relaxed) {
            handle.to("busy", "m", &json!(i)).expect("to");
            i += 1;
            if i.is_multiple_of(50) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    let first = watcher.recv_event("m");
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    let since = first["offset"].as_u64().expect("offset");
    let mut joiners: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = server.ws();
            c.send(json!({"event": "join-room", "data": {"room": "busy", "since": {"offset": since, "epoch": epoch}}}));
            c.recv_event("joined-room");
            c
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    running.store(false, Ordering::Relaxed);
    publisher.join().expect("publisher");
    // Each joiner: every offset after `since` exactly once, in order, up to the last
    // one published, and the `recovered` answer in between.
    let last = read_until_quiet(&mut watcher, since, false);
    for joiner in &mut joiners {
        assert_eq!(read_until_quiet(joiner, since, true), last);
    }
}

/// Reads room events `m` until none comes for half a second, checking their offsets run
/// on from `since` with no gap and no repeat (and, with `recovering`, that a
/// `recovered:true` answer arrives); returns the last offset.
fn read_until_quiet(client: &mut Client, since: u64, recovering: bool) -> u64 {
    let mut last = since;
    let mut answered = false;
    for v in client.read_until_quiet(std::time::Duration::from_millis(500)) {
        match v["event"].as_str() {
            Some("m") => {
                assert_eq!(v["offset"].as_u64(), Some(last + 1), "{v}");
                last += 1;
            }
            Some("recovered") if recovering => {
                assert_eq!(v["data"]["recovered"], true, "{v}");
                answered = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(answered, recovering, "the recovery answer");
    assert!(last > since, "nothing arrived");
    last
}

#[test]
fn tcp_clients_recover_through_json_frames() {
    let server = TestServer::with(history_config(100));
    let mut sender = server.ws();
    sender.join_kept("r");
    let mut watcher = server.ws();
    watcher.join_kept("r");
    let (offset, epoch) = position(&mut sender, &mut watcher, "r");
    publish(&mut sender, "r", 1, 3);

    let mut tcp = server.tcp();
    tcp.send(0x09, "join-room", b"r");
    let joined = tcp.recv();
    assert_eq!(joined.1, "joined-room");
    assert_eq!(tcp.recv().1, "recovered", "the position it starts from");
    let data = json!({"room": "r", "offset": offset, "epoch": epoch}).to_string();
    tcp.send(0x01, "recover", data.as_bytes());
    let mut got = Vec::new();
    for _ in 0..3 {
        let frame = tcp.recv();
        assert_eq!(frame.1, "m");
        got.push(String::from_utf8(frame.2).expect("UTF-8"));
    }
    assert_eq!(got, vec!["1", "2", "3"]);
    let answer = tcp.recv();
    assert_eq!(answer.1, "recovered");
    let answer: Value = serde_json::from_slice(&answer.2).expect("JSON");
    assert_eq!(
        answer,
        json!({"room": "r", "recovered": true, "offset": 4, "epoch": epoch})
    );
}

#[test]
fn a_room_without_history_refuses_recovery_and_carries_no_offsets() {
    let server = TestServer::with(Config {
        history_rooms: vec!["kept:*".into()],
        ..history_config(10)
    });
    let mut a = server.ws();
    a.join("plain");
    let mut b = server.ws();
    b.join("plain");
    a.send(json!({"event": "m", "room": "plain", "data": 1}));
    let msg = b.recv_event("m");
    assert!(
        msg.get("offset").is_none() && msg.get("epoch").is_none(),
        "{msg}"
    );
    b.send(json!({"event": "recover", "data": {"room": "plain", "offset": 0, "epoch": "e"}}));
    let error = b.recv_event("error");
    assert_eq!(error["data"]["code"], "invalid_room", "{error}");
    // Not a member: refused as such.
    b.send(json!({"event": "recover", "data": {"room": "kept:1", "offset": 0, "epoch": "e"}}));
    assert_eq!(b.recv_event("error")["data"]["code"], "not_member");
}

#[test]
fn presence_rooms_tell_members_who_joins_leaves_and_disconnects() {
    let server = TestServer::with(history_config(0));
    let mut a = server.ws();
    a.join("chat:1");
    a.join("other");
    let mut b = server.ws();
    b.join("chat:1");
    let joined = a.recv_event("presence-join");
    assert_eq!(
        joined["data"],
        json!({"room": "chat:1", "id": b.id, "userId": null})
    );
    b.send(json!({"event": "leave-room", "data": "chat:1"}));
    b.recv_event("left-room");
    let left = a.recv_event("presence-leave");
    assert_eq!(left["data"]["id"], b.id.as_str());

    let mut c = server.ws();
    c.join("chat:1");
    c.join("other");
    assert_eq!(a.recv_event("presence-join")["data"]["id"], c.id.as_str());
    let c_id = c.id.clone();
    drop(c);
    let gone = a.recv_event("presence-leave");
    assert_eq!(
        gone["data"],
        json!({"room": "chat:1", "id": c_id, "userId": null}),
        "one leave, for the presence room only"
    );
    // Nothing for `other`, which is not a presence room.
    a.send(json!({"event": "ping"}));
    a.recv_event("pong");
}
