//! Room history and recovery (SPEC §8): each message of a room that keeps history gets
//! the next offset of the room's epoch, and a client that comes back with the position
//! it had gets exactly what it missed, or is told it cannot ([`Recovery::Lost`]). Never a
//! silent gap.
//!
//! A single node keeps history here, in memory ([`Local`]); a cluster keeps it in Redis
//! (`cluster::history`), with the same [`Recovery`] answer. Which rooms keep history is
//! configuration ([`keeps_history`]).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::outbound::Outbound;
use crate::rooms::RoomName;

/// A place in a room's history: the offset of a message within an epoch. A new epoch
/// starts when the history is lost (a restart, an expiry, Redis flushed), so an offset
/// of another epoch says nothing about this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// What a client asks to recover from: the last offset it has, in its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

impl Since {
    /// `{"offset":N,"epoch":"e"}`, as `recover` and `join-room` carry it.
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        Some(Self {
            offset: value.get("offset")?.as_u64()?,
            epoch: value.get("epoch")?.as_str()?.to_owned(),
        })
    }
}

/// The answer to a recovery.
#[derive(Debug)]
pub enum Recovery {
    /// Every message after the client's position, in order; `current` is where the room
    /// stands.
    Recovered {
        messages: Vec<Arc<Outbound>>,
        current: Pos,
    },
    /// The messages after the client's position are no longer all there, or its epoch
    /// is not the room's: the client missed something and must resync.
    Lost { current: Pos },
}

impl Recovery {
    pub fn current(&self) -> &Pos {
        match self {
            Self::Recovered { current, .. } | Self::Lost { current } => current,
        }
    }
}

/// Whether `room` keeps history under `config`: `history_size` > 0 and the room matches
/// `history_rooms` (every room when that is empty).
pub fn keeps_history(config: &Config, room: &str) -> bool {
    config.history_size > 0
        && (config.history_rooms.is_empty() || matches_any(&config.history_rooms, room))
}

/// Whether `room` is one of `patterns`: a name, or `prefix:*` by prefix.
pub fn matches_any(patterns: &[String], room: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => p == room,
    })
}

/// A fresh epoch: 16 random hex digits (std's per-process random hash keys, mixed with
/// the time, so two nodes or two restarts never share one).
pub fn new_epoch() -> Arc<str> {
    let seed = RandomState::new().hash_one(std::time::SystemTime::now());
    Arc::from(format!("{seed:016x}"))
}

/// The answer for a client at `since`, given a history holding offsets
/// `first..=current.offset` (`first` > `current.offset` when it holds none), and a way
/// to take the messages after an offset. No `since` (a plain join): nothing is missed,
/// and the answer gives the client the position it starts from.
pub fn recover_from(
    since: Option<&Since>,
    current: Pos,
    first: u64,
    after: impl FnOnce(u64) -> Vec<Arc<Outbound>>,
) -> Recovery {
    let Some(since) = since else {
        return Recovery::Recovered {
            messages: Vec::new(),
            current,
        };
    };
    let complete = *since.epoch == *current.epoch
        && since.offset <= current.offset
        && (since.offset == current.offset || since.offset + 1 >= first);
    if complete {
        Recovery::Recovered {
            messages: after(since.offset),
            current,
        }
    } else {
        Recovery::Lost { current }
    }
}

/// One room's history on a single node.
struct Log {
    epoch: Arc<str>,
    /// The offset of the newest message (0 before the first).
    offset: u64,
    messages: VecDeque<Arc<Outbound>>,
    touched: Instant,
}

impl Log {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            messages: VecDeque::new(),
            touched: Instant::now(),
        }
    }

    fn current(&self) -> Pos {
        Pos {
            offset: self.offset,
            epoch: Arc::clone(&self.epoch),
        }
    }
}

/// Shards of the room map: publishers of different rooms rarely share a lock.
const SHARDS: usize = 16;

/// A single node's history, in memory: the last `history_size` messages of each room,
/// kept while the room had a message within `history_ttl` (an idle room's history is
/// dropped, and its next message starts a new epoch).
pub struct Local {
    shards: Vec<Mutex<HashMap<RoomName, Log>>>,
    hasher: RandomState,
}

impl Default for Local {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Local {
    fn shard(&self, room: &str) -> std::sync::MutexGuard<'_, HashMap<RoomName, Log>> {
        self.shards[self.hasher.hash_one(room) as usize % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives `msg` the room's next offset, keeps it, and hands it to `deliver` while the
    /// room is locked: two publishers of one room deliver in offset order on every
    /// worker.
    pub fn append(
        &self,
        room: &str,
        msg: Arc<Outbound>,
        config: &Config,
        deliver: impl FnOnce(&Arc<Outbound>),
    ) {
        let mut shard = self.shard(room);
        let log = live_log(&mut shard, room, config.history_ttl);
        log.offset += 1;
        log.touched = Instant::now();
        let msg = Outbound::at(
            msg,
            Pos {
                offset: log.offset,
                epoch: Arc::clone(&log.epoch),
            },
        );
        log.messages.push_back(Arc::clone(&msg));
        while log.messages.len() > config.history_size {
            log.messages.pop_front();
        }
        deliver(&msg);
    }

    /// What a client at `since` missed in `room`. `start` runs under the room's lock
    /// before the answer is read: a caller that begins holding the client's live
    /// messages there gets every message exactly once, in the recovery or live.
    pub fn recover(
        &self,
        room: &str,
        since: Option<&Since>,
        config: &Config,
        start: impl FnOnce(),
    ) -> Recovery {
        let mut shard = self.shard(room);
        start();
        let log = live_log(&mut shard, room, config.history_ttl);
        let first = log.offset + 1 - log.messages.len() as u64;
        recover_from(since, log.current(), first, |after| {
            log.messages
                .iter()
                .filter(|m| m.position().is_some_and(|p| p.offset > after))
                .cloned()
                .collect()
        })
    }

    /// Drops the history of rooms idle past `ttl` (called from a timer).
    pub fn expire(&self, ttl: Duration) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, log| log.touched.elapsed() <= ttl);
        }
    }
}

/// The room's log, a new one (a new epoch) when it had none or it expired.
fn live_log<'a>(shard: &'a mut HashMap<RoomName, Log>, room: &str, ttl: Duration) -> &'a mut Log {
    if shard
        .get(room)
        .is_some_and(|log| log.touched.elapsed() > ttl)
    {
        shard.remove(room);
    }
    if !shard.contains_key(room) {
        shard.insert(Arc::from(room), Log::new());
    }
    shard.get_mut(room).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_protocol::EventName;

    fn config(size: usize) -> Config {
        Config {
            history_size: size,
            ..Config::default()
        }
    }

    fn publish(local: &Local, room: &str, n: u64, config: &Config) -> Vec<u64> {
        let mut delivered = Vec::new();
        for i in 0..n {
            let msg = Outbound::event(&EventName::from_static("m"), &i.to_string(), Some(room));
            local.append(room, msg, config, |m| {
                delivered.push(m.position().map_or(0, |p| p.offset));
            });
        }
        delivered
    }

    fn offsets(recovery: &Recovery) -> Vec<u64> {
        match recovery {
            Recovery::Recovered { messages, .. } => messages
                .iter()
                .map(|m| m.position().map_or(0, |p| p.offset))
                .collect(),
            Recovery::Lost { .. } => panic!("expected a recovery, got {recovery:?}"),
        }
    }

    #[test]
    fn offsets_increase_and_a_position_recovers_exactly_what_followed() {
        let local = Local::default();
        let config = config(100);
        assert_eq!(publish(&local, "r", 5, &config), vec![1, 2, 3, 4, 5]);
        let epoch = local.recover("r", Some(&since(0, "")), &config, || {});
        let epoch = epoch.current().epoch.to_string();
        let got = local.recover("r", Some(&since(2, &epoch)), &config, || {});
        assert_eq!(offsets(&got), vec![3, 4, 5]);
        assert_eq!(got.current().offset, 5);
        let none = local.recover("r", Some(&since(5, &epoch)), &config, || {});
        assert_eq!(offsets(&none), Vec::<u64>::new());
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.to_owned(),
        }
    }

    #[test]
    fn a_trimmed_position_a_wrong_epoch_or_a_future_offset_is_lost() {
        let local = Local::default();
        let config = config(10);
        publish(&local, "r", 50, &config);
        let epoch = local
            .recover("r", Some(&since(0, "x")), &config, || {})
            .current()
            .epoch
            .to_string();
        assert!(matches!(
            local.recover("r", Some(&since(5, &epoch)), &config, || {}),
            Recovery::Lost { current } if current.offset == 50
        ));
        // The oldest kept message is 41: a client at 40 misses nothing.
        assert_eq!(
            offsets(&local.recover("r", Some(&since(40, &epoch)), &config, || {})).len(),
            10
        );
        assert!(matches!(
            local.recover("r", Some(&since(45, "other")), &config, || {}),
            Recovery::Lost { .. }
        ));
        assert!(matches!(
            local.recover("r", Some(&since(51, &epoch)), &config, || {}),
            Recovery::Lost { .. }
        ));
    }

    #[test]
    fn an_expired_room_starts_a_new_epoch() {
        let local = Local::default();
        let mut config = config(10);
        config.history_ttl = Duration::from_millis(20);
        publish(&local, "r", 3, &config);
        let before = local.recover("r", Some(&since(0, "x")), &config, || {});
        std::thread::sleep(Duration::from_millis(40));
        local.expire(config.history_ttl);
        let after = local.recover(
            "r",
            Some(&since(3, &before.current().epoch)),
            &config,
            || {},
        );
        assert!(matches!(after, Recovery::Lost { ref current } if current.offset == 0));
        assert_ne!(before.current().epoch, after.current().epoch);
    }

    #[test]
    fn room_patterns_select_the_rooms_with_history() {
        let mut config = config(0);
        assert!(!keeps_history(&config, "chat:1"), "off at size 0");
        config.history_size = 5;
        assert!(keeps_history(&config, "anything"), "every room by default");
        config.history_rooms = vec!["chat:*".into(), "lobby".into()];
        assert!(keeps_history(&config, "chat:1"));
        assert!(keeps_history(&config, "lobby"));
        assert!(!keeps_history(&config, "lobby2"));
        assert!(!keeps_history(&config, "game:1"));
    }
}
