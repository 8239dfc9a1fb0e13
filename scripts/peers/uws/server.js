// Peer server on uWebSockets.js (npm `uwebsockets`) speaking the subset of Stellar's
// envelope the bench scenarios use, the same as scripts/peers/node-ws/server.js:
// welcome, join-room/leave-room, room relay, `echo` event and ack, ping, binary room
// relay. Rooms are uWS topics, the idiomatic fast path: `ws.publish(room, msg)` sends one
// message to every other subscriber, serialized once.
'use strict';
const uWS = require('uwebsockets');

const port = Number(process.argv[2] || process.env.PORT || 3000);
const decoder = new TextDecoder();
let nextId = 0;

const send = (ws, obj) => ws.send(JSON.stringify(obj), false);

uWS.App().ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  maxBackpressure: 1 << 20,
  idleTimeout: 0,
  open: (ws) => {
    const state = ws.getUserData();
    state.id = `u-${nextId++}`;
    state.rooms = new Set();
    send(ws, { event: 'welcome', data: { id: state.id, message: 'Connected', context: 'api' } });
  },
  message: (ws, raw, isBinary) => {
    const state = ws.getUserData();
    if (isBinary) {
      if (raw.byteLength < 4) return;
      const view = new DataView(raw);
      const len = view.getUint32(0);
      let header;
      try { header = JSON.parse(decoder.decode(new Uint8Array(raw, 4, len))); } catch { return; }
      if (header.room && state.rooms.has(header.room)) ws.publish(header.room, raw, true);
      return;
    }
    let msg;
    try { msg = JSON.parse(decoder.decode(raw)); } catch {
      return send(ws, { event: 'error', data: { code: 'bad_json', message: 'invalid JSON' } });
    }
    const { event, data, room } = msg;
    if (msg._correlationId !== undefined) {
      const name = msg._ackName || event;
      if (name === 'echo') return send(ws, { event: name, data, _isAck: true, _correlationId: msg._correlationId });
      return send(ws, { event: name, error: { code: 'unknown_action', message: `no handler named ${name}` }, _isAck: true, _correlationId: msg._correlationId });
    }
    switch (event) {
      case 'join-room':
        ws.subscribe(data); state.rooms.add(data);
        return send(ws, { event: 'joined-room', data });
      case 'leave-room':
        ws.unsubscribe(data); state.rooms.delete(data);
        return send(ws, { event: 'left-room', data });
      case 'ping': return send(ws, { event: 'pong', data });
      case 'echo': if (!room) return send(ws, { event: 'echo', data });
    }
    if (room) {
      if (!state.rooms.has(room)) return send(ws, { event: 'error', data: { code: 'not_member', message: room } });
      ws.publish(room, JSON.stringify({ event, data, room }), false);
    }
  },
}).listen('127.0.0.1', port, (token) => {
  if (token) console.error(`uws peer on ws://127.0.0.1:${port}/`);
  else { console.error(`uws peer: cannot listen on ${port}`); process.exit(1); }
});
