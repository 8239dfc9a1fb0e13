// Peer server on Node `ws` speaking the subset of Stellar's envelope the bench scenarios
// use (welcome, join-room/leave-room, room relay, `echo` event and ack, ping, binary
// room relay). Rooms are Map<string, Set<WebSocket>>; a relay is serialized once and the
// same string is sent to every member, as a good `ws` application does.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 3000);
// PERMESSAGE_DEFLATE=1: negotiate permessage-deflate as `ws` does when asked (each send
// compressed for its connection, on libuv's thread pool), messages under 128 B plain.
const perMessageDeflate = process.env.PERMESSAGE_DEFLATE ? { threshold: 128 } : false;
const wss = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate, maxPayload: 1 << 20 });
const rooms = new Map();
let nextId = 0;

function send(ws, obj) { ws.send(JSON.stringify(obj)); }

function relay(room, from, payload, binary) {
  const members = rooms.get(room);
  if (!members) return;
  for (const m of members) if (m !== from && m.readyState === 1) m.send(payload, { binary });
}

wss.on('connection', (ws) => {
  ws.id = `n-${nextId++}`;
  ws.rooms = new Set();
  send(ws, { event: 'welcome', data: { id: ws.id, message: 'Connected', context: 'api' } });
  ws.on('message', (raw, isBinary) => {
    if (isBinary) {
      if (raw.length < 4) return;
      const len = raw.readUInt32BE(0);
      let header;
      try { header = JSON.parse(raw.subarray(4, 4 + len).toString()); } catch { return; }
      if (header.room && ws.rooms.has(header.room)) relay(header.room, ws, raw, true);
      return;
    }
    let msg;
    try { msg = JSON.parse(raw.toString()); } catch {
      return send(ws, { event: 'error', data: { code: 'bad_json', message: 'invalid JSON' } });
    }
    const { event, data, room } = msg;
    if (msg._correlationId !== undefined) {
      const name = msg._ackName || event;
      if (name === 'echo') return send(ws, { event: name, data, _isAck: true, _correlationId: msg._correlationId });
      return send(ws, { event: name, error: { code: 'unknown_action', message: `no handler named ${name}` }, _isAck: true, _correlationId: msg._correlationId });
    }
    switch (event) {
      case 'join-room': {
        if (!rooms.has(data)) rooms.set(data, new Set());
        rooms.get(data).add(ws); ws.rooms.add(data);
        return send(ws, { event: 'joined-room', data });
      }
      case 'leave-room': {
        const r = rooms.get(data);
        if (r) { r.delete(ws); if (r.size === 0) rooms.delete(data); }
        ws.rooms.delete(data);
        return send(ws, { event: 'left-room', data });
      }
      case 'ping': return send(ws, { event: 'pong', data });
      case 'echo': if (!room) return send(ws, { event: 'echo', data });
    }
    if (room) {
      if (!ws.rooms.has(room)) return send(ws, { event: 'error', data: { code: 'not_member', message: room } });
      relay(room, ws, JSON.stringify({ event, data, room }), false);
    }
  });
  ws.on('close', () => {
    for (const r of ws.rooms) {
      const set = rooms.get(r);
      if (set) { set.delete(ws); if (set.size === 0) rooms.delete(r); }
    }
  });
});
wss.on('listening', () => console.error(`node-ws peer on ws://127.0.0.1:${port}/`));
