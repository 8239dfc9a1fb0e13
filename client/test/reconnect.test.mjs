// Reconnect after the server dies (SIGKILL) and comes back on the same port: events in
// order, rooms rejoined, the offline queue delivered in order and capped, backoff.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Stellar, StellarClient, WebSocket, next, until } from './harness.mjs';

let server;
const clients = [];

before(async () => {
  server = await Stellar.start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.disconnect()));
  await server.kill();
});

function client(options) {
  const c = server.client(options);
  clients.push(c);
  return c;
}

test('after a restart: events in order, rooms rejoined, queued messages delivered in order', async () => {
  // The sender's attempts fail until the receiver below is in the rooms (its socket is
  // pointed at a closed port meanwhile), so none of the queue is relayed before it.
  let gateOpen = true;
  class GatedWebSocket extends WebSocket {
    constructor(url, ...rest) {
      super(gateOpen ? url : 'ws://127.0.0.1:9/', ...rest);
    }
  }
  const sender = client({ WebSocket: GatedWebSocket, reconnect: { delay: 100, factor: 1, jitter: 0, attempts: 100 } });
  const events = [];
  for (const name of ['connected', 'disconnected', 'reconnecting', 'reconnect']) {
    sender.on(name, () => events.push(name));
  }
  await sender.connect();
  await sender.join('room-a');
  await sender.join('room-b');
  const firstId = sender.id;
  events.length = 0;

  gateOpen = false;
  await server.kill();
  await until(() => sender.state === 'reconnecting', 'the client to notice');
  const sent = [];
  for (let i = 0; i < 20; i++) sent.push(sender.emit('seq', i).for('room-a'));
  const said = sender.say('room-b', 'queued say');
  const view = sender.roomView('room-a');
  await new Promise((r) => setTimeout(r, 300)); // a few failed attempts
  assert.equal(sender.state, 'reconnecting');

  // A receiver is in the rooms before the sender's queue is sent: it joins, and the
  // sender's rejoins and queue follow once the server is back.
  await server.start();
  const receiver = client();
  await receiver.connect();
  await receiver.join('room-a');
  await receiver.join('room-b');
  const seq = [];
  receiver.on('seq', (n) => seq.push(n)).to('room-a');
  const heard = next(receiver, 'say');
  const reconnected = next(sender, 'reconnect', 10000);
  gateOpen = true;
  await reconnected;
  await Promise.all(sent);
  await said;
  assert.equal((await heard).message, 'queued say');
  await until(() => seq.length === 20, 'twenty queued messages');
  assert.deepEqual(seq, [...Array(20).keys()]);
  assert.equal((await view).room, 'room-a');
  assert.ok((await view).members.includes(sender.id), 'room-a rejoined before the queued roomView');

  // A new connection (ids restart with the server, so they may repeat): fresh details.
  const details = await sender.detailsView();
  assert.equal(details.id, sender.id);
  assert.ok(firstId);
  assert.deepEqual(details.rooms.sort(), ['room-a', 'room-b']);
  const reconnecting = events.filter((e) => e === 'reconnecting').length;
  assert.ok(reconnecting >= 2, `several attempts (${reconnecting})`);
  assert.deepEqual(events.filter((e, i) => e !== 'reconnecting' || events[i - 1] !== 'reconnecting'),
    ['disconnected', 'reconnecting', 'connected', 'reconnect']);
  // Rooms rejoined: a message to each still arrives.
  const again = next(sender, 'hello');
  receiver.emit('hello', 'back').for('room-b');
  assert.equal(await again, 'back');
});

test('a message sent while the socket is closing is queued, not lost', async () => {
  const a = client({ reconnect: { delay: 20, attempts: 100 } });
  const b = client();
  await a.connect();
  await b.connect();
  await a.join('closing');
  await b.join('closing');
  const got = next(b, 'late');
  a.ws.close(); // CLOSING now; its close event comes later
  a.emit('late', 'kept').for('closing');
  assert.equal(await got, 'kept');
});

test('the offline queue holds 100 messages: the 101st rejects with queue_full', async () => {
  const c = client({ reconnect: { delay: 60000, attempts: 1 } });
  await c.connect();
  await c.join('q');
  await server.kill();
  await until(() => c.state === 'reconnecting', 'the client to notice');
  const queued = [];
  for (let i = 0; i < 100; i++) queued.push(c.emit('q', i).for('q'));
  await assert.rejects(c.emit('q', 100).for('q'), { code: 'queue_full', message: /100/ });
  await assert.rejects(c.say('q', 'also full'), { code: 'queue_full' });
  await server.start();
  await c.disconnect();
  for (const outgoing of queued) await assert.rejects(outgoing, { code: 'closed' });
});

test('backoff: 1 s base, x1.5, 20 % jitter, 30 s cap, 10 attempts by default', async () => {
  const c = new StellarClient({ url: 'ws://127.0.0.1:9/ws', WebSocket });
  assert.deepEqual(c.reconnect, { delay: 1000, factor: 1.5, jitter: 0.2, maxDelay: 30000, attempts: 10 });
  const delays = [];
  const quick = new StellarClient({
    url: 'ws://127.0.0.1:9/ws', WebSocket,
    reconnect: { delay: 10, factor: 2, jitter: 0.2, maxDelay: 50, attempts: 5 },
  });
  quick.on('reconnecting', ({ attempt, delay }) => delays.push([attempt, delay]));
  const errors = [];
  quick.on('error', (e) => errors.push(e.code));
  await assert.rejects(quick.connect(), { code: 'connect_failed', message: /5 reconnect attempts/ });
  assert.deepEqual(delays.map(([a]) => a), [1, 2, 3, 4, 5]);
  const bounds = [[8, 12], [16, 24], [32, 48], [50, 50], [50, 50]];
  delays.forEach(([, delay], i) => {
    assert.ok(delay >= bounds[i][0] && delay <= bounds[i][1], `attempt ${i + 1}: ${delay} ms`);
  });
  assert.deepEqual(errors, ['connect_failed']);
  assert.equal(quick.state, 'closed');
  const none = new StellarClient({ url: 'ws://127.0.0.1:9/ws', WebSocket, reconnect: false });
  assert.equal(none.reconnect, null);
  await assert.rejects(none.connect(), { code: 'connect_failed' });
});

test('disconnect stops reconnecting', async () => {
  const c = client({ reconnect: { delay: 50, attempts: 100 } });
  await c.connect();
  await server.kill();
  await next(c, 'reconnecting');
  await c.disconnect();
  const attempts = [];
  c.on('reconnecting', () => attempts.push(1));
  await server.start();
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(attempts, []);
  assert.equal(c.state, 'closed');
});
