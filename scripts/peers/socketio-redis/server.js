// Peer server on socket.io 4 speaking, in socket.io's own wire format (engine.io v4 over
// WebSocket only), the room semantics of scripts/peers/node-ws/server.js: join-room /
// leave-room answered with joined-room / left-room, an event with a room argument
// (`emit(event, data, room)`) relayed to the room's other members as
// `(event, data, room)`, `echo` answered as an event or through socket.io's own ack,
// ping answered with pong. stellar-bench speaks it with `--proto socketio`; the CONNECT
// packet's answer stands for Stellar's welcome.
//
// With REDIS_URL set, the server joins a cluster through @socket.io/redis-adapter on
// node-redis: every broadcast is PUBLISHed once to Redis and every node (this one
// included, which skips its own) receives it, as a multi-node socket.io deployment runs.
// Without it, the in-memory adapter: one node.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || process.env.PORT || 3000);

async function clustered(io, url) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pub = createClient({ url });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) client.on('error', (e) => console.error(`socketio-redis peer: redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

function serve(io) {
  io.on('connection', (socket) => {
    socket.onAny((event, ...args) => {
      const ack = typeof args[args.length - 1] === 'function' ? args.pop() : null;
      const [data, room] = args;
      switch (event) {
        case 'join-room':
          socket.join(data);
          return socket.emit('joined-room', data);
        case 'leave-room':
          socket.leave(data);
          return socket.emit('left-room', data);
        case 'ping': return socket.emit('pong', data);
        case 'echo':
          if (ack) return ack(data);
          if (room === undefined) return socket.emit('echo', data);
      }
      if (ack) return ack({ error: { code: 'unknown_action', message: `no handler named ${event}` } });
      if (typeof room !== 'string') return;
      if (!socket.rooms.has(room)) return socket.emit('error', { code: 'not_member', message: room });
      socket.to(room).emit(event, data, room);
    });
  });
  const server = http.createServer();
  io.attach(server);
  server.listen(port, '127.0.0.1', () => console.error(`socketio-redis peer on ws://127.0.0.1:${port}/socket.io/${process.env.REDIS_URL ? ` (cluster via ${process.env.REDIS_URL})` : ''}`));
}

const io = new Server({
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1 << 20,
});
(process.env.REDIS_URL ? clustered(io, process.env.REDIS_URL) : Promise.resolve())
  .then(() => serve(io))
  .catch((e) => { console.error(`socketio-redis peer: ${e.message}`); process.exit(1); });
