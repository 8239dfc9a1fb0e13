/*! Stellar JavaScript client (SPEC §7): one file, no dependency, no build step.
 * Classic <script> (global `StellarClient`), CommonJS/Node >= 18 (`require`, or `import`
 * through Node's CommonJS interop) and ES modules through `stellar-client.mjs` beside it.
 * It speaks the envelope of SPEC §3.1: JSON text frames `{event, data, room?}`, acks
 * (`_ackName`/`_correlationId` → `_isAck`), and binary frames
 * `[u32 BE header length][header JSON {event, _binary: true, room?}][bytes]`. */
(function (root, factory) {
  var StellarClient = factory();
  if (typeof module === 'object' && module.exports) module.exports = StellarClient;
  else root.StellarClient = StellarClient;
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  'use strict';

  // Event names the server accepts (SPEC §3.2): checked here so a bad name rejects at
  // the call, with the call's stack, instead of coming back later as an `error` event.
  var EVENT_NAME = /^[A-Za-z0-9\-./:_]{1,256}$/;
  // Server answers to the reserved verbs, re-emitted as `api` (the framework's
  // "context: api" messages).
  var API_EVENTS = {};
  'welcome joined-room left-room subscribed unsubscribed pong auth_success auth_error recovered'.split(' ')
    .forEach(function (event) { API_EVENTS[event] = true; });
  var textEncoder = new TextEncoder();
  var textDecoder = new TextDecoder();
  var noop = function () {};

  /** An Error with the server's (or the client's) machine-readable `code`. */
  function fail(code, message) {
    var error = new Error(message);
    error.code = code;
    return error;
  }

  /** The WebSocket URL from `url` (ws, wss, http, https, or none: this page's origin). */
  function socketUrl(url) {
    if (!url) {
      if (typeof location === 'undefined') throw fail('no_url', 'StellarClient needs {url} outside a browser');
      url = location.origin + '/ws';
    }
    return new URL(url.replace(/^http/, 'ws'), typeof location === 'undefined' ? undefined : location.href);
  }

  /** `bytes` (ArrayBuffer, a typed array, a DataView or a Buffer) as a Uint8Array. */
  function toBytes(bytes) {
    if (bytes instanceof ArrayBuffer) return new Uint8Array(bytes);
    if (ArrayBuffer.isView(bytes)) return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return null;
  }

  /** A binary frame of SPEC §3.1 parsed to an envelope with `data` a Uint8Array. */
  function parseBinary(bytes) {
    if (bytes.length < 4) return null;
    var length = ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0;
    if (4 + length > bytes.length) return null;
    var header = JSON.parse(textDecoder.decode(bytes.subarray(4, 4 + length)));
    if (!header || typeof header !== 'object') return null;
    return { event: header.event, room: header.room, data: bytes.slice(4 + length), _binary: true,
      offset: header.offset, epoch: header.epoch };
  }

  function binaryFrame(event, room, payload) {
    var header = { event: event, _binary: true };
    if (room !== undefined) header.room = room;
    var head = textEncoder.encode(JSON.stringify(header));
    var frame = new Uint8Array(4 + head.length + payload.length);
    new DataView(frame.buffer).setUint32(0, head.length);
    frame.set(head, 4);
    frame.set(payload, 4 + head.length);
    return frame;
  }

  /** What `emit` and `emitBinary` return: `.for(room | [rooms])` scopes it before it is
   * sent (at the end of the current task); awaiting it waits until it is written. */
  function Outgoing(promise, entry) {
    this.promise = promise;
    this.entry = entry;
  }
  Outgoing.prototype.for = function (rooms) {
    this.entry.rooms = [].concat(rooms);
    return this;
  };
  Outgoing.prototype.then = function (resolve, reject) {
    return this.promise.then(resolve, reject);
  };
  Outgoing.prototype.catch = function (reject) {
    return this.promise.catch(reject);
  };

  /**
   * @param {object} [options] url, defaultRoom, token, tokenUrl, reconnect (false or
   *   {delay, factor, jitter, maxDelay, attempts}), ackTimeout (ms), queueLimit,
   *   WebSocket (constructor: the `ws` package in Node < 22), fetch.
   */
  function StellarClient(options) {
    options = options || {};
    this.url = socketUrl(options.url);
    this.defaultRoom = options.defaultRoom || null;
    this.token = options.token || null;
    this.tokenUrl = options.tokenUrl || null;
    this.reconnect = options.reconnect === false ? null : Object.assign(
      { delay: 1000, factor: 1.5, jitter: 0.2, maxDelay: 30000, attempts: 10 }, options.reconnect);
    this.ackTimeout = options.ackTimeout || 5000;
    this.queueLimit = options.queueLimit == null ? 100 : options.queueLimit;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.fetch = options.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
    this.interceptors = [];
    /** Rooms this client is in, rejoined after every reconnect. */
    this.rooms = new Set();
    /** Room → {offset, epoch} of its last message (rooms with history, SPEC §8): a
     * rejoin asks for what came after it. */
    this._positions = new Map();
    /** Room → how its last join asked (`'join'`, `'since'`, `'blind'`: a rejoin with no
     * position), until the server's `recovered` answer: it decides what the answer means. */
    this._joining = new Map();
    /** 'closed' | 'connecting' | 'connected' | 'reconnecting' */
    this.state = 'closed';
    this.id = null;
    this.ws = null;
    this._details = null;
    this._handlers = new Map();
    this._acks = new Map();
    this._outbox = [];
    this._queue = [];
    this._live = false;
    this._sequence = 0;
    this._attempt = 0;
    this._timer = null;
    this._ready = null;
  }

  var proto = StellarClient.prototype;

  /** Whether the client is connected now (socket.io's `connected`). */
  Object.defineProperty(proto, 'connected', {
    get: function () { return this.state === 'connected'; }
  });

  /** Opens the connection; resolves with `detailsView()` once connected (after retries,
   * when `reconnect` allows them). */
  proto.connect = function () {
    if (this.state === 'connected') return this.detailsView();
    var ready = this._ready;
    if (!ready) {
      ready = this._ready = {};
      ready.promise = new Promise(function (resolve, reject) {
        ready.resolve = resolve;
        ready.reject = reject;
      });
      this.state = 'connecting';
      this._attempt = 0;
      this._open();
    }
    return ready.promise;
  };

  /** Closes the connection for good (no reconnect); pending and queued calls reject. */
  proto.disconnect = function () {
    var ws = this.ws;
    var wasConnected = this.state === 'connected';
    var ready = this._ready;
    var error = fail('closed', 'StellarClient was disconnected');
    this.state = 'closed';
    this.ws = this.id = this._ready = null;
    this._live = false;
    clearTimeout(this._timer);
    this._drop(error, true);
    if (ready) ready.reject(error);
    if (wasConnected) this._emit('disconnected', { code: 1000, reason: 'client disconnect' });
    if (!ws || ws.readyState === 3) return Promise.resolve();
    return new Promise(function (resolve) {
      ws.onclose = function () { resolve(); };
      ws.close(1000);
    });
  };

  proto._open = async function () {
    var self = this;
    var url = new URL(this.url);
    try {
      if (!this.WebSocket) throw fail('no_websocket', 'no WebSocket here: pass {WebSocket} (the `ws` package) in Node < 22');
      if (this.tokenUrl) this.token = await this._fetchToken();
    } catch (error) {
      this._emit('error', error);
      return this._lost(null);
    }
    if (this.state === 'closed') return;
    if (this.token) url.searchParams.set('token', this.token);
    var ws;
    try {
      ws = new this.WebSocket(url.href);
    } catch (error) {
      this._emit('error', error);
      return this._lost(null);
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onmessage = function (event) {
      if (self.ws === ws) self._receive(event.data);
    };
    ws.onclose = function (event) {
      if (self.ws === ws) self._lost(event);
    };
    ws.onerror = noop; // a close event follows every error
  };

  proto._fetchToken = async function () {
    var response = await this.fetch(new URL(this.tokenUrl, this._httpOrigin()).href, { credentials: 'include' });
    var body = await response.json().catch(noop);
    if (!response.ok || !body || typeof body.token !== 'string') {
      throw fail('token_failed', 'GET ' + this.tokenUrl + ' answered ' + response.status + ' without {token}');
    }
    return body.token;
  };

  proto._httpOrigin = function () {
    return this.url.origin.replace(/^ws/, 'http');
  };

  /** The server said `welcome`: rejoin the rooms, send what was queued, then ask
   * `details` (answered after the joins, as the server answers in order). */
  proto._welcome = function (data) {
    var self = this;
    var reconnected = this.state === 'reconnecting';
    var attempts = this._attempt;
    this.id = data && data.id;
    this._live = true;
    this._attempt = 0;
    this._details = null;
    if (this.defaultRoom) this.rooms.add(this.defaultRoom);
    // A room with a known position is rejoined with `since`: the server sends what was
    // missed, in order, then `recovered`, before any new message of the room.
    // A room with no position is rejoined plainly: if it keeps history, the server's
    // answer is where the client now stands, and what it missed since its first join is
    // unknown, so that answer reaches the application as `recovered: false`.
    var joins = Array.from(this.rooms, function (room) {
      var at = self._positions.get(room);
      var join = at ? { room: room, since: { offset: at.offset, epoch: at.epoch } } : room;
      self._joining.set(room, at ? 'since' : 'blind');
      return self._request('join-room', join, true).catch(function (error) {
        self.rooms.delete(room);
        self._positions.delete(room);
        self._joining.delete(room);
        self._emit('error', error);
      });
    });
    var queued = this._queue;
    this._queue = [];
    queued.forEach(function (entry) { self._write(entry); });
    var connected = function (details) {
      if (!self._live) return;
      self.state = 'connected';
      self._emit('connected', details);
      if (reconnected) self._emit('reconnect', { attempts: attempts });
      var ready = self._ready;
      self._ready = null;
      if (ready) ready.resolve(details);
    };
    // A server that never answers `details` still gives a working connection.
    Promise.all(joins).then(function () {
      return self.detailsView();
    }).then(connected, function () { connected(null); });
  };

  /** The socket closed (or never opened): reconnect with backoff, or give up. */
  proto._lost = function (event) {
    var wasConnected = this.state === 'connected';
    this.ws = null;
    this.id = null;
    this._live = false;
    if (this.state === 'closed') return;
    this._drop(fail('disconnected', 'the connection closed before the answer'), false);
    if (wasConnected) this._emit('disconnected', { code: event ? event.code : 1006, reason: event ? event.reason : '' });
    var policy = this.reconnect;
    if (!policy || this._attempt >= policy.attempts) {
      var error = fail('connect_failed', policy ? 'gave up after ' + this._attempt + ' reconnect attempts' : 'connection failed');
      var ready = this._ready;
      this._ready = null;
      this.state = 'closed';
      this._drop(error, true);
      this._emit('error', error);
      if (ready) ready.reject(error);
      return;
    }
    this._attempt += 1;
    var delay = Math.min(policy.maxDelay, policy.delay * Math.pow(policy.factor, this._attempt - 1) *
      (1 + policy.jitter * (2 * Math.random() - 1)));
    this.state = 'reconnecting';
    this._emit('reconnecting', { attempt: this._attempt, delay: delay });
    var self = this;
    this._timer = setTimeout(function () { self._open(); }, delay);
  };

  /** Rejects every answer awaited on the socket and, when `all`, everything queued. */
  proto._drop = function (error, all) {
    this._acks.forEach(function (ack, id, acks) {
      if (ack.sent || all) {
        clearTimeout(ack.timer);
        acks.delete(id);
        ack.reject(error);
      }
    });
    if (!all) return;
    var entries = this._queue.concat(this._outbox);
    this._queue = [];
    this._outbox = [];
    entries.forEach(function (entry) { entry.reject(error); });
  };

  proto._receive = function (raw) {
    var message;
    try {
      message = typeof raw === 'string' ? JSON.parse(raw) : parseBinary(toBytes(raw) || new Uint8Array(0));
    } catch (error) {
      message = null;
    }
    if (!message || typeof message !== 'object' || typeof message.event !== 'string') {
      var text = typeof raw === 'string' ? raw.slice(0, 80) : 'a binary frame';
      return this._emit('error', fail('bad_message', 'unreadable message from the server: ' + text));
    }
    if (message._isAck) return this._answer(message);
    // One check per message; only messages of rooms with history carry an offset.
    if (message.offset !== undefined) {
      this._track(message.room !== undefined ? message.room : message.data && message.data.room, message);
    }
    this._emit('message', message, message);
    var event = message.event;
    if (event === 'recovered' && message.data && this._recovered(message.data)) return;
    if (event === 'welcome' && !this._live) this._welcome(message.data);
    if (API_EVENTS[event] === true) this._emit('api', message);
    if (event === 'error') {
      var data = message.data || {};
      return this._emit('error', fail(data.code || 'error', data.message || 'server error'));
    }
    this._emit(event, message.data, message);
  };

  /** The server's `recovered` answer to a join: tracks the position; true when the
   * application is not told (the answer to a first join only says where the room stands). */
  proto._recovered = function (answer) {
    var asked = this._joining.get(answer.room);
    this._joining.delete(answer.room);
    this._track(answer.room, answer);
    if (asked === 'blind') answer.recovered = false;
    return asked === 'join';
  };

  /** `room`'s position is now `at` ({offset, epoch}): messages come in order. */
  proto._track = function (room, at) {
    var position = this._positions.get(room);
    if (position) {
      position.offset = at.offset;
      position.epoch = at.epoch;
    } else {
      this._positions.set(room, { offset: at.offset, epoch: at.epoch });
    }
  };

  proto._answer = function (message) {
    var ack = this._acks.get(message._correlationId);
    if (!ack) return;
    clearTimeout(ack.timer);
    this._acks.delete(message._correlationId);
    var error = message.error;
    if (error) ack.reject(fail(error.code || 'error', error.message || String(error)));
    else ack.resolve(message.data);
  };

  /** Calls the handlers of `event`; one that throws raises `error`, never into the socket. */
  proto._emit = function (event, data, message) {
    // Lists are replaced, never changed in place (on, off), so this loop needs no copy.
    var handlers = this._handlers.get(event);
    if (!handlers) return;
    var room = message && (message.room !== undefined ? message.room : data && data.room);
    for (var i = 0; i < handlers.length; i++) {
      var handler = handlers[i];
      if (handler.rooms && !handler.rooms.has(room)) continue;
      try {
        handler.fn(data, message);
      } catch (error) {
        if (event !== 'error') this._emit('error', error);
      }
    }
  };

  /** Queues `entry` ({frames(), resolve, reject, ack?}) behind everything sent before it;
   * the outbox is written at the end of this task so `.for()` can still scope it. */
  proto._post = function (entry) {
    if (this._outbox.push(entry) > 1) return;
    var self = this;
    queueMicrotask(function () {
      var entries = self._outbox;
      self._outbox = [];
      entries.forEach(function (e) {
        // A socket that is closing drops what it is given: queue for the next one.
        if (self._live && self.ws.readyState === 1) self._write(e);
        else if (self.state === 'closed') e.reject(fail('closed', 'StellarClient is not connected: call connect() first'));
        else if (self._queue.length >= self.queueLimit) e.reject(fail('queue_full', 'offline queue is full (' + self.queueLimit + ' messages)'));
        else self._queue.push(e);
      });
    });
  };

  proto._write = function (entry) {
    var ws = this.ws;
    try {
      entry.frames().forEach(function (frame) { ws.send(frame); });
    } catch (error) {
      return entry.reject(error);
    }
    entry.resolve();
  };

  /** An ack request (SPEC §3.1); `now` writes it ahead of the queue (the rejoins). */
  proto._request = function (name, data, now) {
    var self = this;
    var id = name + '#' + ++this._sequence;
    return new Promise(function (resolve, reject) {
      var ack = { resolve: resolve, reject: reject, sent: false, timer: null };
      self._acks.set(id, ack);
      var entry = {
        frames: function () {
          return [JSON.stringify({ event: name, data: data, _ackName: name, _correlationId: id })];
        },
        resolve: function () {
          ack.sent = true;
          ack.timer = setTimeout(function () {
            self._acks.delete(id);
            reject(fail('timeout', name + ': no answer within ' + self.ackTimeout + ' ms'));
          }, self.ackTimeout);
        },
        reject: function (error) {
          self._acks.delete(id);
          reject(error);
        }
      };
      if (now) self._write(entry);
      else self._post(entry);
    });
  };

  /** A message with no answer; the promise settles when it is written (or refused). */
  proto._send = function (frames, rooms) {
    var entry = { frames: frames, rooms: rooms };
    var promise = new Promise(function (resolve, reject) {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    promise.catch(noop); // fire-and-forget callers must not crash Node on a rejection
    this._post(entry);
    return new Outgoing(promise, entry);
  };

  function checkName(event) {
    if (typeof event !== 'string' || !EVENT_NAME.test(event)) {
      throw fail('invalid_event', 'event names are 1-256 of [A-Za-z0-9-./:_], got ' + JSON.stringify(event));
    }
  }

  /** Sends `{event, data}`; `.for(room | [rooms])` relays it to those rooms' members. */
  proto.emit = function (event, data) {
    try {
      checkName(event);
    } catch (error) {
      return this._refused(error);
    }
    var text = function (room) {
      var message = { event: event, data: data === undefined ? null : data };
      if (room !== undefined) message.room = room;
      return JSON.stringify(message);
    };
    var outgoing = this._send(function () {
      return outgoing.entry.rooms ? outgoing.entry.rooms.map(text) : [text()];
    });
    return outgoing;
  };

  /** Sends a binary event (SPEC §3.1); handlers receive `bytes` as a Uint8Array. */
  proto.emitBinary = function (event, bytes) {
    var payload = toBytes(bytes);
    try {
      checkName(event);
      if (!payload) throw fail('invalid_data', 'emitBinary needs an ArrayBuffer or a typed array');
    } catch (error) {
      return this._refused(error);
    }
    payload = payload.slice(); // the caller may reuse its buffer before the send
    var outgoing = this._send(function () {
      var rooms = outgoing.entry.rooms;
      return rooms ? rooms.map(function (room) { return binaryFrame(event, room, payload); })
        : [binaryFrame(event, undefined, payload)];
    });
    return outgoing;
  };

  proto._refused = function (error) {
    var promise = Promise.reject(error);
    promise.catch(noop);
    return new Outgoing(promise, {});
  };

  /** Chat: `say(message)` to the default room, or `say(room, message)`. */
  proto.say = function (room, message) {
    if (arguments.length < 2) {
      message = room;
      room = this.defaultRoom;
    }
    if (typeof room !== 'string' || !room) {
      return this._refused(fail('no_room', 'say needs a room (or setDefaultRoom first)')).promise;
    }
    return this._send(function () {
      return [JSON.stringify({ event: 'say', data: { room: room, message: message } })];
    }).promise;
  };

  /** Listens to `event`; `.to(room | [rooms])` keeps only messages of those rooms. */
  proto.on = function (event, fn) {
    return this._on(event, fn, fn);
  };

  /** Like `on`, for the first matching message only. */
  proto.once = function (event, fn) {
    var self = this;
    return this._on(event, function (data, message) {
      self.off(event, fn);
      fn(data, message);
    }, fn);
  };

  /** Registers `fn` under `event`; `off(event, original)` removes it. */
  proto._on = function (event, fn, original) {
    if (typeof original !== 'function') throw fail('invalid_handler', 'on(' + event + ') needs a function');
    var handler = { fn: fn, original: original, rooms: null };
    this._handlers.set(event, (this._handlers.get(event) || []).concat(handler));
    var chain = {
      to: function (rooms) {
        handler.rooms = new Set([].concat(rooms));
        return chain;
      }
    };
    return chain;
  };

  /** Removes `fn` from `event`, or every handler of `event` when `fn` is omitted. */
  proto.off = function (event, fn) {
    var list = this._handlers.get(event);
    if (!list) return this;
    var kept = fn ? list.filter(function (h) { return h.original !== fn; }) : [];
    if (kept.length) this._handlers.set(event, kept);
    else this._handlers.delete(event);
    return this;
  };

  /** Calls the server's `on_ack` handler `name`: over the socket when connected, else
   * `POST /api/<name>`. Interceptors run first (see the README). */
  proto.action = function (name, params) {
    var self = this;
    params = params === undefined ? {} : params;
    var after = [];
    return new Promise(function (resolve, reject) {
      var finish = function (response) {
        try {
          for (var i = after.length - 1; i >= 0; i--) {
            var changed = after[i](response);
            if (changed !== undefined) response = changed;
          }
          resolve(response);
        } catch (error) {
          reject(error);
        }
      };
      var step = function (index) {
        if (index === self.interceptors.length) {
          var call = self._live ? self._request(name, params) : self._http(name, params);
          return call.then(finish, reject);
        }
        var called = false;
        var next = function (value, error) {
          if (called) return;
          called = true;
          if (error) return reject(error);
          if (typeof value === 'function') after.push(value);
          else if (value != null) return finish(value);
          step(index + 1);
        };
        try {
          self.interceptors[index](params, next);
        } catch (error) {
          reject(error);
        }
      };
      try {
        checkName(name);
        step(0);
      } catch (error) {
        reject(error);
      }
    });
  };

  proto._http = async function (name, params) {
    if (!this.fetch) throw fail('no_fetch', 'no fetch here for the HTTP fallback');
    if (this.tokenUrl && !this.token) this.token = await this._fetchToken();
    var headers = { 'Content-Type': 'application/json' };
    if (this.token) headers.Authorization = 'Bearer ' + this.token;
    var response = await this.fetch(this._httpOrigin() + '/api/' + name,
      { method: 'POST', headers: headers, body: JSON.stringify(params), credentials: 'include' });
    var body = await response.json().catch(noop);
    if (response.ok && body) return body.data;
    var error = (body && body.error) || {};
    throw fail(error.code || 'http_' + response.status, error.message || 'HTTP ' + response.status);
  };

  /** Joins `room`; rejects with the server's refusal (`forbidden`, `too_many_rooms`). */
  proto.join = proto.roomAdd = function (room) {
    var self = this;
    // A position kept from before a leave is not this membership's.
    if (!this.rooms.has(room)) this._positions.delete(room);
    this._joining.set(room, 'join');
    return this._request('join-room', room).then(function () {
      self.rooms.add(room);
      return room;
    }, function (error) {
      self._joining.delete(room);
      throw error;
    });
  };

  proto.leave = proto.roomLeave = function (room) {
    this.rooms.delete(room);
    this._positions.delete(room);
    this._joining.delete(room);
    if (!this._live) return Promise.resolve(room);
    return this._request('leave-room', room).then(function () { return room; });
  };

  /** `room`'s position `{offset, epoch}` (rooms with history, SPEC §8): where the last
   * message this client received (or its join) left it; undefined before the server said. */
  proto.position = function (room) {
    var at = this._positions.get(room);
    return at ? { offset: at.offset, epoch: at.epoch } : undefined;
  };

  /** Asks the server (SPEC §8) for what this client missed in `room` since its last
   * message; resolves with `{room, recovered, offset, epoch}`, also emitted as `recovered`.
   * `recovered: false`: messages were missed and are gone (or there was no position yet:
   * the server's answer to the join had not arrived). */
  proto.recover = function (room) {
    var self = this;
    if (!this.rooms.has(room)) return Promise.reject(fail('not_member', 'recover: not in room ' + room));
    // Offline, the rejoin recovers; a recovery queued behind it would ask twice.
    if (this.state !== 'connected') return Promise.reject(fail('disconnected', 'recover: not connected'));
    var at = this._positions.get(room) || { offset: 0, epoch: '' };
    return this._request('recover', { room: room, offset: at.offset, epoch: at.epoch }).then(function (answer) {
      self._track(room, answer);
      self._emit('recovered', answer, { event: 'recovered', data: answer });
      return answer;
    });
  };

  /** `{room, membersCount, members}` */
  proto.roomView = function (room) {
    return this._request('room-view', room || this.defaultRoom);
  };

  /** `{id, remoteAddress, protocol, connectedAt, rooms}` of this connection; the first
   * answer is kept until the next (re)connection. */
  proto.detailsView = function () {
    if (!this._details) {
      var self = this;
      var details = this._request('details', null);
      this._details = details;
      details.catch(function () {
        if (self._details === details) self._details = null;
      });
    }
    return this._details;
  };

  /** `{content, mime, length}` of a file under the server's `public_dir`. */
  proto.file = function (path) {
    return this._request('file', path);
  };

  proto.setDefaultRoom = function (room) {
    this.defaultRoom = room;
    return this;
  };

  return StellarClient;
});
