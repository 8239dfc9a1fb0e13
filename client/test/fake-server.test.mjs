// What the real server never sends: malformed frames, silence instead of an answer,
// operator alerts. A small `ws` server plays the server's part here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { StellarClient, WebSocket, next, until } from './harness.mjs';

let fake;
let url;
let peer; // the server side of the latest connection
const received = [];

before(async () => {
  fake = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => fake.once('listening', resolve));
  url = `ws://127.0.0.1:${fake.address().port}/ws`;
  fake.on('connection', (socket) => {
    peer = socket;
    socket.on('message', (data, isBinary) => {
      const message = isBinary ? { binary: [...data] } : JSON.parse(data.toString());
      received.push(message);
      if (message.event === 'details') {
        socket.send(JSON.stringify({ event: 'details', data: { id: 'fake-1', rooms: [] }, _isAck: true, _correlationId: message._correlationId }));
      }
    });
    socket.send(JSON.stringify({ event: 'welcome', data: { id: 'fake-1', message: 'Connected', context: 'api' } }));
  });
});

after(() => new Promise((resolve) => {
  for (const client of fake.clients) client.terminate();
  fake.close(resolve);
}));

async function connected(options = {}) {
  const client = new StellarClient({ url, WebSocket, reconnect: false, ...options });
  await client.connect();
  return client;
}

/** Bytes of a SPEC §3.1 binary frame with `header` (raw text) and `payload`. */
function binaryFrame(header, payload) {
  const head = Buffer.from(header);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(head.length);
  return Buffer.concat([length, head, Buffer.from(payload)]);
}

test('malformed frames raise error and the client keeps working', async () => {
  const client = await connected();
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  const good = [];
  client.on('good', (data) => good.push(data));
  peer.send('not json {');
  peer.send('{"data": "no event"}');
  peer.send('42');
  peer.send('null');
  peer.send('{"event": 7}');
  peer.send(Buffer.from([0, 0]), { binary: true }); // shorter than the length prefix
  peer.send(binaryFrame('{"event":"x"}', 'p').subarray(0, 6), { binary: true }); // header cut off
  peer.send(binaryFrame('{not json', 'p'), { binary: true });
  peer.send(binaryFrame('"just a string"', 'p'), { binary: true });
  const huge = Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2]);
  peer.send(huge, { binary: true });
  peer.send(JSON.stringify({ event: 'good', data: 1 }));
  peer.send(JSON.stringify({ event: 'welcome', data: null })); // a second welcome is ignored
  peer.send(JSON.stringify({ event: 'error' })); // an error with no data
  peer.send(JSON.stringify({ _isAck: true, event: 'x', _correlationId: 'nobody#1' })); // unknown ack
  peer.send(JSON.stringify({ event: 'good', data: 2 }));
  await until(() => good.length === 2, 'the valid messages');
  assert.deepEqual(good, [1, 2]);
  assert.deepEqual(errors, [...Array(10).fill('bad_message'), 'error']);
  assert.equal(client.state, 'connected');
  await client.disconnect();
});

test('alert and welcome events carry the server data', async () => {
  const client = new StellarClient({ url, WebSocket, reconnect: false });
  const welcome = next(client, 'welcome');
  await client.connect();
  assert.equal((await welcome).id, 'fake-1');
  const alert = next(client, 'alert');
  peer.send(JSON.stringify({ event: 'alert', data: { message: 'maintenance at noon' } }));
  assert.equal((await alert).message, 'maintenance at noon');
  await client.disconnect();
});

test('binary frames from the server reach handlers as Uint8Array, scoped by room', async () => {
  const client = await connected();
  const all = [];
  const inA = [];
  client.on('state', (bytes) => all.push([...bytes]));
  client.on('state', (bytes) => inA.push([...bytes])).to('a');
  peer.send(binaryFrame('{"event":"state","_binary":true,"room":"a"}', [1, 2]), { binary: true });
  peer.send(binaryFrame('{"event":"state","_binary":true,"room":"b"}', [3]), { binary: true });
  peer.send(binaryFrame('{"event":"state","_binary":true}', []), { binary: true });
  await until(() => all.length === 3, 'three binary frames');
  assert.deepEqual(all, [[1, 2], [3], []]);
  assert.deepEqual(inA, [[1, 2]]);
  await client.disconnect();
});

test('emitBinary writes the SPEC 3.1 frame', async () => {
  const client = await connected();
  received.length = 0;
  await client.emitBinary('audio', new Uint8Array([9, 8, 7])).for('voice');
  await client.emitBinary('audio', new Uint8Array([1]).buffer);
  await until(() => received.length === 2, 'two binary frames');
  const expected = [...binaryFrame('{"event":"audio","_binary":true,"room":"voice"}', [9, 8, 7])];
  assert.deepEqual(received[0].binary, expected);
  assert.deepEqual(received[1].binary, [...binaryFrame('{"event":"audio","_binary":true}', [1])]);
  await client.disconnect();
});

test('wire format of emit, say and requests', async () => {
  const client = await connected();
  received.length = 0;
  client.emit('chat', { t: 'hi' }).for(['r1', 'r2']);
  client.emit('plain');
  client.say('r1', 'hello');
  client.roomView('r1').catch(() => {});
  await until(() => received.length === 5, 'five messages');
  assert.deepEqual(received.slice(0, 4), [
    { event: 'chat', data: { t: 'hi' }, room: 'r1' },
    { event: 'chat', data: { t: 'hi' }, room: 'r2' },
    { event: 'plain', data: null },
    { event: 'say', data: { room: 'r1', message: 'hello' } },
  ]);
  const request = received[4];
  assert.equal(request.event, 'room-view');
  assert.equal(request._ackName, 'room-view');
  assert.match(request._correlationId, /^room-view#\d+$/);
  await client.disconnect();
});

test('an unanswered request times out (ackTimeout, default 5 s)', async () => {
  const fast = await connected({ ackTimeout: 100 });
  const started = Date.now();
  await assert.rejects(fast.action('silence', {}), { code: 'timeout' });
  assert.ok(Date.now() - started >= 100);
  await fast.disconnect();
  const client = await connected();
  const begun = Date.now();
  await assert.rejects(client.action('silence', {}), { code: 'timeout', message: /no answer within 5000 ms/ });
  const waited = Date.now() - begun;
  assert.ok(waited >= 5000 && waited < 6000, `waited ${waited} ms`);
  await client.disconnect();
});

test('a server that never answers details still connects (details null)', async () => {
  const client = new StellarClient({ url, WebSocket, reconnect: false, ackTimeout: 100 });
  const original = fake.listeners('connection')[0];
  fake.off('connection', original);
  fake.on('connection', (socket) => {
    peer = socket;
    socket.send(JSON.stringify({ event: 'welcome', data: { id: 'mute-1' } }));
  });
  try {
    assert.equal(await client.connect(), null);
    assert.equal(client.state, 'connected');
    assert.equal(client.id, 'mute-1');
  } finally {
    fake.off('connection', fake.listeners('connection')[0]);
    fake.on('connection', original);
    await client.disconnect();
  }
});

test('a request in flight when the connection drops rejects with disconnected', async () => {
  const client = await connected({ reconnect: { delay: 10000, attempts: 1 } });
  const pending = client.action('silence', {});
  const dropped = assert.rejects(pending, { code: 'disconnected' });
  peer.terminate();
  await dropped;
  await client.disconnect();
});
