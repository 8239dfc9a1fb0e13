// server/examples/*.rs driven by the client: chat (the demo on the library API), game
// (binary inputs, 20 Hz binary world state per arena), stellarstack (session cookie →
// /api/ws/token → token, subscribe, ping, server:sync every 5 s).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Stellar, example, next, until } from './harness.mjs';

/** Runs the example `name` (with `args`) for the enclosing suite; `clients` made through
 * it are disconnected at its end. */
function exampleServer(name, args = []) {
  const suite = { server: null, clients: [] };
  before(async () => { suite.server = await Stellar.start(args, example(name)); });
  after(async () => {
    await Promise.all(suite.clients.map((c) => c.disconnect()));
    await suite.server.kill();
  });
  suite.client = (options) => {
    const client = suite.server.client(options);
    suite.clients.push(client);
    return client;
  };
  return suite;
}

describe('chat example', () => {
  const suite = exampleServer('chat');

  test('motd on connect, nick, rooms with member counts, say, and the demo page', async () => {
    const a = suite.client();
    const b = suite.client();
    const motd = next(a, 'motd');
    await a.connect();
    assert.match((await motd).message, /Welcome/);
    await b.connect();
    assert.deepEqual(await a.action('nick', { nick: 'ada' }), { nick: 'ada' });
    await assert.rejects(a.action('nick', { nick: '' }), { code: 'bad_nick' });
    await a.join('lobby');
    await b.join('lobby');
    await b.join('games');
    assert.deepEqual(await a.action('rooms'), [{ room: 'games', members: 1 }, { room: 'lobby', members: 2 }]);
    const heard = next(b, 'say');
    await a.say('lobby', { name: 'ada', text: 'hi' });
    assert.deepEqual((await heard).message, { name: 'ada', text: 'hi' });
    const page = await fetch(`${suite.server.http}/demo`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /stellar-client\.js/);
  });
});

describe('game example', () => {
  const suite = exampleServer('game');

  /** Decodes a `state` frame: tick and players by id. */
  function decode(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const tick = view.getUint32(0);
    const players = {};
    let at = 6;
    for (let i = 0; i < view.getUint16(4); i++) {
      const length = bytes[at];
      const id = new TextDecoder().decode(bytes.subarray(at + 1, at + 1 + length));
      at += 1 + length;
      players[id] = { x: view.getFloat32(at), y: view.getFloat32(at + 4) };
      at += 8;
    }
    return { tick, players };
  }

  test('binary inputs move the player; each arena gets its state at 20 Hz', async () => {
    const [a, b, other] = [suite.client(), suite.client(), suite.client()];
    await Promise.all([a, b, other].map((c) => c.connect()));
    await a.join('arena:1');
    await b.join('arena:1');
    await other.join('arena:2');
    const states = [];
    b.on('state', (bytes) => states.push({ at: Date.now(), ...decode(bytes) })).to('arena:1');
    const elsewhere = [];
    other.on('state', (bytes) => elsewhere.push(decode(bytes)));
    await a.emitBinary('input', new Int8Array([1, -1]));
    await other.emitBinary('input', new Int8Array([0, 1]));
    await until(() => states.length >= 21, 'a second of arena:1 states', 5000);
    const second = states.slice(-21);
    const elapsed = second[20].at - second[0].at;
    assert.ok(elapsed >= 700 && elapsed <= 1400, `20 ticks in ${elapsed} ms`);
    assert.ok(second.every((s, i) => i === 0 || s.tick > second[i - 1].tick), 'ticks increase');
    const last = second[20].players[a.id];
    const first = second[0].players[a.id];
    assert.ok(last.x > first.x && last.y < first.y, `moved right and up: ${JSON.stringify([first, last])}`);
    assert.equal(second[20].players[other.id], undefined, 'arena:2 players are not in arena:1');
    assert.ok(elsewhere.length > 0 && elsewhere.every((s) => Object.keys(s.players).join() === other.id));
  });
});

describe('stellarstack example', () => {
  const suite = exampleServer('stellarstack', ['--jwt-secret', 'stellarstack-test']);

  /** A client whose fetch sends the page's session cookie (Node has no cookie jar). */
  function withSession(cookie) {
    const sessionFetch = (url, init = {}) => fetch(url, { ...init, headers: { ...init.headers, Cookie: `session=${cookie}` } });
    return suite.client({ tokenUrl: '/api/ws/token', fetch: sessionFetch });
  }

  test('session cookie → token → subscribe, ping, server:sync every 5 s', async () => {
    const ada = withSession('session-ada');
    await ada.connect();
    const subscribed = next(ada, 'subscribed');
    ada.emit('subscribe', 'server:1');
    assert.equal(await subscribed, 'server:1');
    await assert.rejects(ada.join('server:3'), { code: 'forbidden' });
    const pong = next(ada, 'pong');
    ada.emit('ping', { t: 1 });
    assert.deepEqual(await pong, { t: 1 });
    const started = Date.now();
    const sync = await next(ada, 'server:sync', 6000);
    assert.equal(sync.server, 'server:1');
    assert.equal(sync.subscribers, 1);
    const again = await next(ada, 'server:sync', 6000);
    const gap = again.at - sync.at;
    assert.ok(gap >= 4500 && gap <= 5500, `${gap} ms between syncs`);
    assert.ok(Date.now() - started < 12000);
  });

  test('no session: no token, no connection', async () => {
    const stranger = withSession('nobody');
    stranger.reconnect = null;
    const error = next(stranger, 'error');
    await assert.rejects(stranger.connect(), { code: 'connect_failed' });
    assert.equal((await error).code, 'token_failed');
    const bob = withSession('session-bob');
    await bob.connect();
    await assert.rejects(bob.join('server:1'), { code: 'forbidden' });
    assert.equal(await bob.join('server:2'), 'server:2');
  });
});
