// Every method and event of the client against a real `stellar` binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Stellar, StellarClient, WebSocket, next, until } from './harness.mjs';

let server;
let publicDir;
const clients = [];

before(async () => {
  publicDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stellar-js-'));
  fs.writeFileSync(path.join(publicDir, 'hello.txt'), 'hello from public_dir');
  server = await Stellar.start(['--public-dir', publicDir]);
});

after(async () => {
  await Promise.all(clients.map((c) => c.disconnect()));
  await server.kill();
  fs.rmSync(publicDir, { recursive: true, force: true });
});

/** Two connected clients, both in `room`. */
async function pairIn(room) {
  const a = await connected();
  const b = await connected();
  await a.join(room);
  await b.join(room);
  return [a, b];
}

/** A connected client, disconnected after the suite. */
async function connected(options) {
  const client = server.client(options);
  clients.push(client);
  await client.connect();
  return client;
}

test('connect resolves with the details and fires welcome, api and connected', async () => {
  const client = server.client();
  clients.push(client);
  const seen = [];
  client.on('welcome', (w) => seen.push(['welcome', w.context]));
  client.on('api', (m) => seen.push(['api', m.event]));
  client.on('connected', (d) => seen.push(['connected', d.id]));
  const details = await client.connect();
  assert.equal(client.state, 'connected');
  assert.equal(details.id, client.id);
  assert.equal(details.protocol, 'websocket');
  assert.deepEqual(details.rooms, []);
  assert.deepEqual(seen, [['api', 'welcome'], ['welcome', 'api'], ['connected', client.id]]);
  assert.equal(await client.connect(), details, 'a second connect resolves with the cached details');
});

test('detailsView caches its first answer', async () => {
  const client = await connected();
  const first = await client.detailsView();
  await client.join('details-room');
  assert.equal(await client.detailsView(), first);
  assert.deepEqual(first.rooms, []);
});

test('join, roomView, leave (and their framework names) track membership', async () => {
  const a = await connected();
  const b = await connected();
  assert.equal(await a.join('lobby'), 'lobby');
  assert.equal(await b.roomAdd('lobby'), 'lobby');
  const view = await a.roomView('lobby');
  assert.equal(view.room, 'lobby');
  assert.equal(view.membersCount, 2);
  assert.deepEqual(new Set(view.members), new Set([a.id, b.id]));
  assert.equal(await b.roomLeave('lobby'), 'lobby');
  assert.equal((await a.roomView('lobby')).membersCount, 1);
  await a.leave('lobby');
  assert.deepEqual([...a.rooms], []);
  assert.equal((await a.roomView('lobby')).membersCount, 0);
});

test('emit().for() relays to the rooms, on().to() filters by room, off removes', async () => {
  const a = await connected();
  const b = await connected();
  await Promise.all([a.join('r1'), a.join('r2'), b.join('r1'), b.join('r2')]);
  const all = [];
  const onlyR2 = [];
  const count = (data, message) => all.push([data.n, message.room]);
  b.on('move', count);
  b.on('move', (data) => onlyR2.push(data.n)).to('r2');
  await a.emit('move', { n: 1 }).for('r1');
  await a.emit('move', { n: 2 }).for(['r1', 'r2']);
  await until(() => all.length === 3, 'three relayed moves');
  assert.deepEqual(all, [[1, 'r1'], [2, 'r1'], [2, 'r2']]);
  assert.deepEqual(onlyR2, [2]);
  b.off('move', count);
  await a.emit('move', { n: 3 }).for('r2');
  await until(() => onlyR2.length === 2, 'the room-filtered handler');
  assert.equal(all.length, 3, 'off removed the handler');
  b.off('move');
  await a.emit('move', { n: 4 }).for('r2');
  await a.roomView('r2');
  assert.deepEqual(onlyR2, [2, 3], 'off(event) removed every handler');
});

test('once fires for the first matching message only; connected tells the state', async () => {
  const [a, b] = await pairIn('once');
  assert.equal(a.connected, true);
  const got = [];
  const handler = (data) => got.push(data);
  b.once('note', handler).to('once');
  b.once('other', handler);
  b.off('other', handler); // off takes the function given to once
  a.emit('note', 1).for('once');
  a.emit('note', 2).for('once');
  a.emit('other', 3).for('once');
  await a.roomView('once');
  await b.roomView('once');
  assert.deepEqual(got, [1]);
  const fresh = server.client();
  assert.equal(fresh.connected, false);
});

test('message fires for every server message', async () => {
  const [a, b] = await pairIn('m');
  const got = next(b, 'message');
  a.emit('ping-like', 7).for('m');
  const message = await got;
  assert.deepEqual(message, { event: 'ping-like', data: 7, room: 'm' });
});

test('say reaches the room (default room or explicit) as a say event', async () => {
  const a = await connected({ defaultRoom: 'chat' });
  const b = await connected();
  assert.ok(a.rooms.has('chat'), 'the default room is joined on connect');
  await b.join('chat');
  const heard = next(b, 'say');
  await a.say('hello');
  const said = await heard;
  assert.equal(said.room, 'chat');
  assert.equal(said.from, a.id);
  assert.equal(said.message, 'hello');
  assert.equal(typeof said.sentAt, 'number');
  await a.join('other');
  await b.join('other');
  const filtered = [];
  b.on('say', (s) => filtered.push(s.message)).to('other');
  await a.say('other', 'in other');
  await a.say('not in other');
  await until(() => filtered.length === 1, 'the say to `other`');
  assert.deepEqual(filtered, ['in other']);
  b.setDefaultRoom('other');
  assert.equal(b.defaultRoom, 'other');
  assert.equal((await b.roomView()).room, 'other', 'roomView() uses the default room');
  const noRoom = await connected();
  await assert.rejects(noRoom.say('nowhere'), { code: 'no_room' });
});

test('action calls on_ack handlers over the socket and rejects with the server error', async () => {
  const client = await connected();
  assert.deepEqual(await client.action('echo', { a: 1 }), { a: 1 });
  await assert.rejects(client.action('nope', {}), { code: 'unknown_action' });
  await assert.rejects(client.action('bad name!', {}), { code: 'invalid_event' });
});

test('action falls back to POST /api/<name> when not connected', async () => {
  const requests = [];
  const fetchSpy = (url, init) => {
    requests.push([init.method, url]);
    return fetch(url, init);
  };
  const client = server.client({ fetch: fetchSpy });
  assert.equal(client.state, 'closed');
  assert.deepEqual(await client.action('echo', { via: 'http' }), { via: 'http' });
  await assert.rejects(client.action('nope'), { code: 'unknown_action' });
  assert.deepEqual(requests, [['POST', `${server.http}/api/echo`], ['POST', `${server.http}/api/nope`]]);
  clients.push(client);
  await client.connect();
  assert.deepEqual(await client.action('echo', 2), 2);
  assert.equal(requests.length, 2, 'connected: over the socket');
});

test('interceptors: next(), next(obj), next(null, err), next(fn)', async () => {
  const client = await connected();
  const order = [];
  client.interceptors.push((params, next) => {
    order.push('first');
    params.stamped = true;
    next();
  });
  assert.deepEqual(await client.action('echo', { x: 1 }), { x: 1, stamped: true });

  client.interceptors.push((params, next) => next(params.cached ? { fromCache: true } : undefined));
  assert.deepEqual(await client.action('echo', { cached: true }), { fromCache: true });

  client.interceptors.push((params, next) => (params.deny ? next(null, new Error('denied')) : next()));
  await assert.rejects(client.action('echo', { deny: true }), /denied/);

  client.interceptors.push((params, next) => next((response) => ({ wrapped: response })));
  client.interceptors.push((params, next) => setTimeout(() => next(), 5)); // asynchronous
  assert.deepEqual(await client.action('echo', { y: 2 }), { wrapped: { y: 2, stamped: true } });
  assert.ok(order.length >= 4);

  client.interceptors.push(() => { throw new Error('interceptor threw'); });
  await assert.rejects(client.action('echo', {}), /interceptor threw/);
});

test('file answers from public_dir, not_found otherwise', async () => {
  const client = await connected();
  const file = await client.file('hello.txt');
  assert.equal(file.content, 'hello from public_dir');
  assert.match(file.mime, /^text\/plain/);
  assert.equal(file.length, 21);
  await assert.rejects(client.file('missing.txt'), { code: 'not_found' });
});

test('binary events both ways arrive as Uint8Array', async () => {
  const [a, b] = await pairIn('bin');
  const got = next(b, 'frame');
  const gotMessage = next(b, 'message');
  const sent = new Float32Array([1.5, -2, 3.25]);
  await a.emitBinary('frame', sent).for('bin');
  const bytes = await got;
  assert.ok(bytes instanceof Uint8Array);
  assert.deepEqual([...new Float32Array(bytes.buffer)], [1.5, -2, 3.25]);
  const message = await gotMessage;
  assert.equal(message.room, 'bin');
  assert.equal(message._binary, true);
  const back = next(a, 'reply');
  b.emitBinary('reply', Buffer.from([0, 255, 7])).for('bin');
  assert.deepEqual([...(await back)], [0, 255, 7]);
  await assert.rejects(a.emitBinary('frame', 'not bytes').for('bin'), { code: 'invalid_data' });
});

test('a server error event raises error and the client keeps working', async () => {
  const client = await connected();
  const error = next(client, 'error');
  client.emit('x', 1).for('not-joined');
  assert.equal((await error).code, 'not_member');
  assert.equal(await client.action('echo', 'still fine'), 'still fine');
});

test('a throwing handler raises error instead of breaking the socket', async () => {
  const [a, b] = await pairIn('t');
  b.on('boom', () => { throw new Error('handler failed'); });
  const error = next(b, 'error');
  a.emit('boom', null).for('t');
  assert.equal((await error).message, 'handler failed');
  const after = next(b, 'after');
  a.emit('after', 1).for('t');
  assert.equal(await after, 1);
});

test('calls on a closed client reject clearly; disconnect fires disconnected', async () => {
  const client = await connected();
  const pending = assert.rejects(client.roomView('r'), { code: 'closed' }, 'an unanswered request rejects');
  const gone = next(client, 'disconnected');
  await client.disconnect();
  assert.equal((await gone).code, 1000);
  assert.equal(client.state, 'closed');
  await pending;
  await assert.rejects(client.emit('x', 1), { code: 'closed' });
  await assert.rejects(client.say('room', 'hi'), { code: 'closed' });
  await assert.rejects(client.join('r'), { code: 'closed' });
  await assert.rejects(client.roomView('r'), { code: 'closed' });
  await assert.rejects(client.emit('bad name', 1), { code: 'invalid_event' });
  assert.throws(() => client.on('x', 'not a function'), { code: 'invalid_handler' });
});

test('works with the global WebSocket when there is one', { skip: typeof globalThis.WebSocket !== 'function' }, async () => {
  const client = new StellarClient({ url: server.http });
  clients.push(client);
  const details = await client.connect();
  assert.equal(details.id, client.id);
  assert.equal(await client.action('echo', 'global'), 'global');
});

test('without any WebSocket, connect rejects with no_websocket', async () => {
  const client = new StellarClient({ url: server.url, WebSocket: null, reconnect: false });
  client.WebSocket = undefined;
  const error = next(client, 'error');
  await assert.rejects(client.connect(), { code: 'connect_failed' });
  assert.equal((await error).code, 'no_websocket');
});

test('the ws package is used as given', () => {
  assert.equal(server.client().WebSocket, WebSocket);
});
