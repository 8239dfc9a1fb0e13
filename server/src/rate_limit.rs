//! Per-client rate limits as token buckets (SPEC §4): a client's own override wins,
//! then a per-event limit, then the global `rate_limit` per `rate_limit_window`.
//!
//! The table of overrides is shared by all workers as an immutable snapshot: a change
//! (from any thread, through the handle) builds a new table and sends it to every
//! worker through the mesh, so checking a message takes no lock. Buckets live in the
//! connection and are touched only by its worker.

use std::cell::{Ref, RefCell, RefMut};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// `count` messages per `window`, with bursts up to `count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

impl Limit {
    pub fn new(count: u32, window: Duration) -> Self {
        Self { count, window }
    }

    /// Zero means unlimited.
    fn is_unlimited(&self) -> bool {
        self.count == 0 || self.window.is_zero()
    }
}

/// The overrides in force: per event name and per client id.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    pub events: HashMap<String, Limit>,
    pub clients: HashMap<String, Limit>,
}

impl RateLimits {
    /// Whether any limit could refuse a message: false when `global` is off and no
    /// event or client has a limit of its own, so the check (and its clock read) can be
    /// skipped.
    pub fn applies(&self, global: Limit) -> bool {
        !global.is_unlimited() || !self.events.is_empty() || !self.clients.is_empty()
    }
}

/// Addresses whose HTTP rate-limit buckets a worker keeps at most.
const MAX_HTTP_BUCKETS: usize = 65_536;

/// One worker's rate limiting: its copy of the override table, and the buckets of HTTP
/// action callers (HTTP has no connection to keep them in; dropped wholesale past
/// [`MAX_HTTP_BUCKETS`] addresses). Connections keep their own buckets.
pub struct Limiter {
    table: RefCell<Arc<RateLimits>>,
    http: RefCell<HashMap<IpAddr, Buckets>>,
}

impl Limiter {
    pub fn new(table: Arc<RateLimits>) -> Self {
        Self {
            table: RefCell::new(table),
            http: RefCell::default(),
        }
    }

    /// The overrides changed at run time.
    pub fn set_table(&self, table: Arc<RateLimits>) {
        *self.table.borrow_mut() = table;
    }

    /// The override table and the global limit, or `None` when no limit is configured
    /// at all and nothing needs checking (nor the clock reading).
    fn in_force(&self, config: &Config) -> Option<(Ref<'_, Arc<RateLimits>>, Limit)> {
        let global = Limit::new(config.rate_limit, config.rate_limit_window);
        let table = self.table.borrow();
        table.applies(global).then_some((table, global))
    }

    /// Whether client `id` may send one more `event`; `buckets` gives its buckets,
    /// asked for only when a limit is in force (they are made at the first ask).
    pub fn allow<'a, C: std::ops::Deref<Target = str>>(
        &self,
        config: &Config,
        buckets: impl FnOnce() -> RefMut<'a, Buckets>,
        id: impl FnOnce() -> C,
        event: &str,
    ) -> bool {
        let Some((table, global)) = self.in_force(config) else {
            return true;
        };
        buckets().allow(id, event, &table, global, Instant::now())
    }

    /// Whether the HTTP caller at `ip` may call action `name` once more.
    pub fn allow_http(&self, config: &Config, ip: IpAddr, name: &str) -> bool {
        let Some((table, global)) = self.in_force(config) else {
            return true;
        };
        let mut buckets = self.http.borrow_mut();
        if buckets.len() >= MAX_HTTP_BUCKETS && !buckets.contains_key(&ip) {
            buckets.clear();
        }
        buckets.entry(ip).or_default().allow(
            || ip.to_string(),
            name,
            &table,
            global,
            Instant::now(),
        )
    }
}

/// A token bucket: refills continuously at `count / window`, holds at most `count`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limit: Limit,
}

impl Bucket {
    fn new(limit: Limit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.count),
            at: now,
            limit,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let per_sec = f64::from(self.limit.count) / self.limit.window.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.limit.count));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One connection's buckets: one for the client-wide limit, one per limited event.
#[derive(Debug, Default)]
pub struct Buckets {
    client: Option<Bucket>,
    events: ahash::HashMap<String, Bucket>,
}

impl Buckets {
    /// Takes a token for `event` from the bucket the priority rule picks; false when
    /// the client is over its limit. `client` names the client (its id, or an HTTP
    /// caller's address); it is asked for only when some client has a limit of its own,
    /// so the check on every message spells out no id.
    pub fn allow<C: std::ops::Deref<Target = str>>(
        &mut self,
        client: impl FnOnce() -> C,
        event: &str,
        table: &RateLimits,
        global: Limit,
        now: Instant,
    ) -> bool {
        if !table.clients.is_empty()
            && let Some(limit) = table.clients.get(&*client())
        {
            return Self::take(&mut self.client, *limit, now);
        }
        if let Some(limit) = table.events.get(event) {
            if limit.is_unlimited() {
                return true;
            }
            let bucket = self
                .events
                .entry(event.to_owned())
                .or_insert_with(|| Bucket::new(*limit, now));
            if bucket.limit != *limit {
                *bucket = Bucket::new(*limit, now);
            }
            return bucket.take(now);
        }
        Self::take(&mut self.client, global, now)
    }

    fn take(slot: &mut Option<Bucket>, limit: Limit, now: Instant) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        let bucket = slot.get_or_insert_with(|| Bucket::new(limit, now));
        if bucket.limit != limit {
            *bucket = Bucket::new(limit, now);
        }
        bucket.take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn limits_apply_unless_all_are_off() {
        let off = Limit::new(0, SECOND);
        let mut table = RateLimits::default();
        assert!(!table.applies(off));
        assert!(table.applies(Limit::new(5, SECOND)));
        table.events.insert("chat".into(), Limit::new(1, SECOND));
        assert!(table.applies(off));
        table.events.clear();
        table.clients.insert("c".into(), Limit::new(1, SECOND));
        assert!(table.applies(off));
    }

    #[test]
    fn bucket_allows_a_burst_then_refills_over_time() {
        let t0 = Instant::now();
        let mut b = Buckets::default();
        let table = RateLimits::default();
        let global = Limit::new(3, SECOND);
        assert!((0..3).all(|_| b.allow(|| "c", "e", &table, global, t0)));
        assert!(!b.allow(|| "c", "e", &table, global, t0));
        // A third of a second refills one token.
        assert!(b.allow(
            || "c",
            "e",
            &table,
            global,
            t0 + SECOND / 3 + Duration::from_millis(1)
        ));
        assert!(!b.allow(
            || "c",
            "e",
            &table,
            global,
            t0 + SECOND / 3 + Duration::from_millis(2)
        ));
    }

    #[test]
    fn client_override_beats_event_limit_which_beats_global() {
        let t0 = Instant::now();
        let mut table = RateLimits::default();
        table.events.insert("chat".into(), Limit::new(1, SECOND));
        let global = Limit::new(100, SECOND);
        let mut b = Buckets::default();
        assert!(b.allow(|| "c", "chat", &table, global, t0));
        assert!(
            !b.allow(|| "c", "chat", &table, global, t0),
            "per-event limit applies"
        );
        assert!(
            b.allow(|| "c", "move", &table, global, t0),
            "other events use the global bucket"
        );
        table.clients.insert("c".into(), Limit::new(5, SECOND));
        let mut b = Buckets::default();
        assert!(
            (0..5).all(|_| b.allow(|| "c", "chat", &table, global, t0)),
            "the client override wins"
        );
        assert!(!b.allow(|| "c", "chat", &table, global, t0));
    }

    #[test]
    fn zero_means_unlimited() {
        let t0 = Instant::now();
        let mut b = Buckets::default();
        assert!((0..10_000).all(|_| b.allow(
            || "c",
            "e",
            &RateLimits::default(),
            Limit::new(0, SECOND),
            t0
        )));
    }
}
