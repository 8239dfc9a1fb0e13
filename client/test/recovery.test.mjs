// History recovery (SPEC §7 last bullet, §8) and presence events, against the real server
// with history on. The client's connection runs through a TCP proxy in this file that the
// test cuts and keeps refusing for a while: the server stays up (a restart would lose its
// single-node history) and only sees a connection close, as after a network failure.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Stellar, freePorts, next, until } from './harness.mjs';

const servers = [];
const clients = [];
const proxies = [];

after(async () => {
  await Promise.all(clients.map((c) => c.disconnect()));
  for (const p of proxies) await p.close();
  for (const s of servers) await s.kill();
});

async function start(args) {
  const server = await Stellar.start(args);
  servers.push(server);
  return server;
}

function client(server, options) {
  const c = server.client(options);
  clients.push(c);
  return c;
}

/** A TCP proxy on a free loopback port to `port`: `cut()` closes every connection
 * through it and refuses new ones until `open()`. */
async function proxy(port) {
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((inbound) => {
    if (refusing) return inbound.destroy();
    const outbound = net.connect(port, '127.0.0.1');
    for (const socket of [inbound, outbound]) {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        sockets.delete(socket);
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  const [listen] = await freePorts();
  await new Promise((resolve) => server.listen(listen, '127.0.0.1', resolve));
  const handle = {
    url: `ws://127.0.0.1:${listen}/ws`,
    cut() {
      refusing = true;
      for (const socket of sockets) socket.destroy();
    },
    open() {
      refusing = false;
    },
    close() {
      handle.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
  proxies.push(handle);
  return handle;
}

/** A client through a proxy to `server`, in `room`, recording its `m` events (data,
 * offset, epoch) and its `recovered` answers (with how many events came before each). */
async function memberThroughProxy(server, room) {
  const cut = await proxy(server.port);
  const away = client(server, { url: cut.url, reconnect: { delay: 50, factor: 1, jitter: 0, attempts: 1000 } });
  const got = [];
  const answers = [];
  away.on('m', (n, message) => got.push([n, message.offset, message.epoch])).to(room);
  away.on('recovered', (answer) => answers.push({ ...answer, after: got.length })).to(room);
  await away.connect();
  await away.join(room);
  return { away, cut, got, answers };
}

/** Two more members of `room`: one to send, one that records the `m` events it sees
 * (`seen`: what the room, and its history, holds). */
async function senderAndWatcher(server, room) {
  const sender = client(server);
  const watcher = client(server);
  await sender.connect();
  await watcher.connect();
  await sender.join(room);
  await watcher.join(room);
  const seen = [];
  watcher.on('m', (n) => seen.push(n));
  return { sender, seen };
}

/** Cuts `away`'s connection, runs `whileAway` (with the client offline), lets it back,
 * and waits for its rejoin. */
async function cutAndReconnect({ away, cut }, whileAway) {
  const gone = next(away, 'disconnected');
  cut.cut();
  await gone;
  await whileAway();
  assert.equal(away.state, 'reconnecting');
  const back = next(away, 'reconnect', 10000);
  cut.open();
  await back;
}

test('back from a cut connection: every missed message, in order, once, then recovered:true', async () => {
  const server = await start(['--history-size', '100']);
  const member = await memberThroughProxy(server, 'r');
  const { sender, seen } = await senderAndWatcher(server, 'r');
  sender.emit('m', 0).for('r');
  await until(() => member.got.length === 1 && seen.length === 1, 'the first message');
  const [, firstOffset, epoch] = member.got[0];
  assert.equal(typeof epoch, 'string');

  await cutAndReconnect(member, async () => {
    for (let i = 1; i <= 50; i++) sender.emit('m', i).for('r');
    await until(() => seen.length === 51, 'the 50 messages to be in the room (and its history)');
  });
  await until(() => member.answers.length === 1, 'the recovered answer');
  const expected = Array.from({ length: 51 }, (_, i) => [i, firstOffset + i, epoch]);
  assert.deepEqual(member.got, expected, 'the 50 missed messages after the one seen, in order, none twice');
  assert.deepEqual(member.answers, [{ room: 'r', recovered: true, offset: firstOffset + 50, epoch, after: 51 }],
    'answered after the missed messages');

  // Live delivery goes on from there, and the next recovery starts from the new position.
  sender.emit('m', 51).for('r');
  await until(() => member.got.length === 52, 'a live message');
  assert.deepEqual(member.got[51], [51, firstOffset + 51, epoch]);
  await cutAndReconnect(member, async () => {
    sender.emit('m', 52).for('r');
    await until(() => seen.length === 53, 'the message sent while away');
  });
  await until(() => member.answers.length === 2, 'the second recovered answer');
  assert.deepEqual(member.got.map(([n]) => n), [...Array(53).keys()]);
  assert.deepEqual(member.answers[1], { room: 'r', recovered: true, offset: firstOffset + 52, epoch, after: 53 });
});

test('a member that dropped before any message of a quiet room still recovers what it missed', async () => {
  const server = await start(['--history-size', '100']);
  const member = await memberThroughProxy(server, 'quiet');
  await until(() => member.away.position('quiet'), 'the position the join starts from');
  assert.deepEqual(member.answers, [], 'the answer to a first join is not a recovery');
  const { sender, seen } = await senderAndWatcher(server, 'quiet');
  const from = member.away.position('quiet');

  await cutAndReconnect(member, async () => {
    for (let i = 0; i < 5; i++) sender.emit('m', i).for('quiet');
    await until(() => seen.length === 5, 'the 5 messages to be in the room (and its history)');
  });
  await until(() => member.answers.length === 1, 'the recovered answer');
  const { epoch } = from;
  assert.deepEqual(member.got, [0, 1, 2, 3, 4].map((i) => [i, from.offset + 1 + i, epoch]),
    'the 5 sent while it was away, in order');
  assert.deepEqual(member.answers, [{ room: 'quiet', recovered: true, offset: from.offset + 5, epoch, after: 5 }]);
});

test('more missed than the history keeps: recovered:false is surfaced, live delivery goes on', async () => {
  const server = await start(['--history-size', '10']);
  const member = await memberThroughProxy(server, 'r');
  const { sender, seen } = await senderAndWatcher(server, 'r');
  // The position comes from a `say` (its room is in its data): tracked like any event.
  const said = new Promise((resolve) => member.away.once('say', (say, message) => resolve(message)));
  await sender.say('r', 'hello');
  assert.equal((await said).offset, 1, 'a say carries its position');

  await cutAndReconnect(member, async () => {
    for (let i = 1; i <= 50; i++) sender.emit('m', i).for('r');
    await until(() => seen.length === 50, 'the 50 messages to be in the room');
  });
  await until(() => member.answers.length === 1, 'the recovered answer');
  const [answer] = member.answers;
  assert.equal(answer.recovered, false, 'only 10 of the 50 are kept: the client must resync');
  assert.equal(answer.room, 'r');
  assert.equal(answer.offset, 51);
  assert.equal(typeof answer.epoch, 'string');
  assert.deepEqual(member.got, [], 'no partial recovery');

  sender.emit('m', 51).for('r');
  await until(() => member.got.length === 1, 'a live message after the failed recovery');
  assert.deepEqual(member.got, [[51, 52, answer.epoch]]);
});

test('recover(room) resolves with the answer (also emitted); refuses non-members and rooms without history', async () => {
  const server = await start(['--history-size', '100', '--history-rooms', 'kept:*']);
  const a = client(server);
  const b = client(server);
  await a.connect();
  await b.connect();
  await a.join('kept:1');
  await b.join('kept:1');
  const got = [];
  a.on('m', (n) => got.push(n)).to('kept:1');
  const emitted = [];
  a.on('recovered', (answer) => emitted.push(answer)).to('kept:1');

  // No message seen yet: the server's answer to the join is the position the client
  // starts from, tracked without a `recovered` event (nothing was asked).
  await until(() => a.position('kept:1'), 'the position the join starts from');
  const first = await a.recover('kept:1');
  assert.deepEqual(first, { room: 'kept:1', recovered: true, ...a.position('kept:1') });
  assert.equal(typeof first.epoch, 'string');
  for (let i = 0; i < 3; i++) b.emit('m', i).for('kept:1');
  await until(() => got.length === 3, 'three messages');
  const answer = await a.recover('kept:1');
  assert.deepEqual(answer, { room: 'kept:1', recovered: true, offset: first.offset + 3, epoch: first.epoch });
  assert.deepEqual(emitted, [first, answer]);
  assert.deepEqual(got, [0, 1, 2], 'nothing twice');

  await assert.rejects(a.recover('elsewhere'), { code: 'not_member' });
  await a.join('plain');
  await assert.rejects(a.recover('plain'), { code: 'invalid_room' });
});

test('presence rooms: presence-join and presence-leave reach on() handlers', async () => {
  const server = await start(['--presence-rooms', 'chat:*']);
  const a = client(server);
  const b = client(server);
  const c = client(server);
  await a.connect();
  await b.connect();
  await c.connect();
  await a.join('chat:1');
  await a.join('other');
  const presence = [];
  a.on('presence-join', (p) => presence.push(['join', p])).to('chat:1');
  a.on('presence-leave', (p) => presence.push(['leave', p])).to('chat:1');

  await b.join('chat:1');
  await b.join('other'); // not a presence room
  await until(() => presence.length === 1, 'presence-join');
  await b.leave('chat:1');
  await until(() => presence.length === 2, 'presence-leave');
  await c.join('chat:1');
  const cId = c.id;
  await until(() => presence.length === 3, "c's presence-join");
  await c.disconnect();
  await until(() => presence.length === 4, "c's presence-leave on disconnect");
  assert.deepEqual(presence, [
    ['join', { room: 'chat:1', id: b.id, userId: null }],
    ['leave', { room: 'chat:1', id: b.id, userId: null }],
    ['join', { room: 'chat:1', id: cId, userId: null }],
    ['leave', { room: 'chat:1', id: cId, userId: null }],
  ]);
});
