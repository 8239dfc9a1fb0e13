//! What a handler gets ([`Ctx`]): the client, the event and its data, and ways to
//! answer, all acting through the worker that owns the client (SPEC §4).

use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;
use stellar_protocol::EventName;

use crate::api::{SendError, ServerHandle};
use crate::auth::AuthUser;
use crate::connection::{ClientInfo, Conn};
use crate::mesh::{Barrier, IdText};
use crate::outbound::Outbound;
use crate::worker::Worker;

/// What a handler gets: the client, the event and its data, and ways to answer.
pub struct Ctx<'a> {
    worker: &'a Rc<Worker>,
    conn: Option<&'a Rc<Conn>>,
    event: &'a str,
    /// The message's `data` as it arrived (JSON text), when it came from a client.
    raw: Option<&'a str>,
    /// `data` as a value, parsed on first use: a handler that only passes `data` on
    /// (`data_raw`) never pays for a parse and a re-serialization.
    data: std::cell::OnceCell<Value>,
    /// The client's id as text (connections keep only the numeric id), made on first
    /// use: most handlers never ask.
    id: std::cell::OnceCell<IdText>,
    /// A join made by the handler that other workers must learn before reading on.
    pending: std::cell::RefCell<Option<Arc<Barrier>>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        worker: &'a Rc<Worker>,
        conn: Option<&'a Rc<Conn>>,
        event: &'a EventName<'_>,
        data: Value,
    ) -> Self {
        let ctx = Self::from_raw(worker, conn, event, None);
        let _ = ctx.data.set(data);
        ctx
    }

    /// A context whose `data` is the JSON text `raw` (absent: `null`), parsed only if a
    /// handler asks for it as a value.
    pub(crate) fn from_raw(
        worker: &'a Rc<Worker>,
        conn: Option<&'a Rc<Conn>>,
        event: &'a EventName<'_>,
        raw: Option<&'a str>,
    ) -> Self {
        Self {
            worker,
            conn,
            event: event.as_str(),
            raw,
            data: std::cell::OnceCell::new(),
            id: std::cell::OnceCell::new(),
            pending: std::cell::RefCell::new(None),
        }
    }

    /// A join made by the handler that other workers must learn before the client's
    /// next message is read.
    pub(crate) fn take_pending(self) -> Option<Arc<Barrier>> {
        self.pending.into_inner()
    }

    /// The client's id (`"http"` for an HTTP action).
    pub fn id(&self) -> &str {
        match self.conn {
            Some(conn) => self.id.get_or_init(|| conn.id.text()),
            None => "http",
        }
    }

    pub fn event(&self) -> &str {
        self.event
    }

    /// The message's `data` (`null` when absent or not valid JSON).
    pub fn data(&self) -> &Value {
        self.data.get_or_init(|| {
            self.raw
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null)
        })
    }

    /// The message's `data` as JSON text, exactly as the client sent it when it came
    /// from a client (no parse); otherwise `data()` serialized.
    pub fn data_raw(&self) -> std::borrow::Cow<'_, str> {
        match (self.raw, self.data.get()) {
            (Some(raw), _) => raw.into(),
            (None, Some(value)) => value.to_string().into(),
            (None, None) => "null".into(),
        }
    }

    /// The client, with its user id once authenticated (`None` for an HTTP action).
    pub fn client_info(&self) -> Option<ClientInfo> {
        self.conn.map(|c| c.client_info())
    }

    /// The authenticated user and claims, if any.
    pub fn user(&self) -> Option<AuthUser> {
        self.conn.and_then(|c| c.user().map(|u| u.clone()))
    }

    /// Sends `event` to this client.
    pub fn emit(&self, event: &str, data: &Value) -> Result<(), SendError> {
        self.emit_raw(event, &data.to_string())
    }

    /// Sends `event` to this client with `json` as its `data`, written as is: `json`
    /// must be one valid JSON value (such as `data_raw()`), or the client gets a broken
    /// envelope.
    pub fn emit_raw(&self, event: &str, json: &str) -> Result<(), SendError> {
        let event = EventName::new(event)?;
        if let Some(conn) = self.conn {
            conn.emit_raw(&event, json, &self.worker.stats);
        }
        Ok(())
    }

    /// Joins a room; `false` when a limit refused it.
    pub fn join(&self, room: &str) -> bool {
        let Some(conn) = self.conn else { return false };
        match self.worker.join(conn, room) {
            Ok(barrier) => {
                if barrier.is_some() {
                    *self.pending.borrow_mut() = barrier;
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn leave(&self, room: &str) -> bool {
        self.conn.is_some_and(|conn| self.worker.leave(conn, room))
    }

    pub fn rooms(&self) -> Vec<String> {
        self.conn
            .map(|c| {
                let rooms = self.worker.rooms_of(c);
                rooms.iter().map(ToString::to_string).collect()
            })
            .unwrap_or_default()
    }

    /// Sends to every client, this one too unless `exclude_self`.
    pub fn broadcast(
        &self,
        event: &str,
        data: &Value,
        exclude_self: bool,
    ) -> Result<(), SendError> {
        let msg = Outbound::event(&EventName::new(event)?, &data.to_string(), None);
        let exclude = self.conn.filter(|_| exclude_self).map(|c| c.id);
        self.worker.publish_all(msg, exclude);
        Ok(())
    }

    /// Sends to every member of `room` (this client too, if a member).
    pub fn to(&self, room: &str, event: &str, data: &Value) -> Result<(), SendError> {
        let event = EventName::new(event)?;
        let msg = Outbound::event(&event, &data.to_string(), Some(room));
        self.worker.publish_room(room, msg, None);
        Ok(())
    }

    pub fn set(&self, key: &str, value: Value) {
        if let Some(conn) = self.conn {
            self.worker.set_meta(conn, key, value);
        }
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.conn.and_then(|c| self.worker.meta(c, key))
    }

    /// The server handle, for anything beyond this client.
    pub fn server(&self) -> ServerHandle {
        self.worker.handle()
    }
}
