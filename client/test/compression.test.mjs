// permessage-deflate (`--compression true`) with the `ws` package, which negotiates it
// like browsers do: room messages arrive intact and compressed to members that agreed,
// plain to one that did not; a deflate bomb is closed with 1009 without the server
// spending the memory.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Stellar, WebSocket, until } from './harness.mjs';

let server;

before(async () => {
  server = await Stellar.start(['--compression', 'true']);
});

after(async () => {
  await server.kill();
});

/** A raw `ws` socket that has read its welcome, recording every message. */
async function open(perMessageDeflate) {
  const ws = new WebSocket(server.url, { perMessageDeflate });
  const upgrade = new Promise((resolve) => ws.once('upgrade', (response) => resolve(response.headers)));
  const messages = [];
  ws.on('message', (data, isBinary) => messages.push(isBinary ? data : JSON.parse(data)));
  await until(() => messages.length >= 1, 'welcome');
  assert.equal(messages[0].event, 'welcome');
  return { ws, messages, extensions: (await upgrade)['sec-websocket-extensions'] };
}

async function join(client, room) {
  const before = client.messages.length;
  client.ws.send(JSON.stringify({ event: 'join-room', data: room }));
  await until(() => client.messages.length > before, 'joined-room');
  assert.deepEqual(client.messages.at(-1), { event: 'joined-room', data: room });
}

async function stats() {
  return (await fetch(`${server.http}/stats`)).json();
}

test('members that agreed get room messages compressed, the others plain, all intact', async () => {
  const deflate = { threshold: 0 };
  const a = await open(deflate);
  const b = await open(deflate);
  const plain = await open(false);
  assert.match(a.extensions, /^permessage-deflate/);
  assert.match(a.extensions, /server_no_context_takeover/, 'one compressed frame suits every member');
  assert.equal(plain.extensions, undefined);
  for (const c of [a, b, plain]) await join(c, 'telemetry');

  // A telemetry-like payload that compresses well.
  const sample = { sensor: 'temp', values: Array.from({ length: 400 }, (_, i) => ({ t: i, v: 21.5 })) };
  const out0 = (await stats()).bytesOut;
  const rounds = 20;
  for (let i = 0; i < rounds; i++) {
    a.ws.send(JSON.stringify({ event: 'reading', room: 'telemetry', data: { i, sample } }));
  }
  await until(() => b.messages.length >= 2 + rounds && plain.messages.length >= 2 + rounds, 'every reading');
  for (const c of [b, plain]) {
    const got = c.messages.slice(2).map((m) => m.data.i);
    assert.deepEqual(got, Array.from({ length: rounds }, (_, i) => i), 'in order');
    assert.deepEqual(c.messages.at(-1).data.sample, sample, 'intact');
  }
  const plainBytes = JSON.stringify({ event: 'reading', data: { i: 0, sample }, room: 'telemetry' }).length;
  const sent = (await stats()).bytesOut - out0;
  // One plain copy per reading for `plain`, a compressed one for `b`: far less than two
  // plain copies.
  assert.ok(sent < rounds * plainBytes * 1.3, `bytes out ${sent} vs ${rounds} x ${plainBytes} plain`);
  for (const c of [a, b, plain]) c.ws.close();
});

test('acks and direct replies work compressed', async () => {
  const a = await open({ threshold: 0 });
  const big = 'x'.repeat(5000);
  a.ws.send(JSON.stringify({ event: 'echo', data: { big }, _ackName: 'echo', _correlationId: 'c1' }));
  await until(() => a.messages.some((m) => m._correlationId === 'c1'), 'the ack reply');
  const reply = a.messages.find((m) => m._correlationId === 'c1');
  assert.equal(reply.data.big, big);
  a.ws.close();
});

test('a deflate bomb past max_payload is closed with 1009 and the server keeps its memory', async () => {
  const bystander = await open({ threshold: 0 });
  const rssBefore = (await stats()).rssBytes;
  const bomber = new WebSocket(server.url, { perMessageDeflate: { threshold: 0 } });
  await new Promise((resolve) => bomber.once('open', resolve));
  // 64 MiB of zeros compress to about 64 KiB: well under max_payload (1 MiB) on the
  // wire, 64 times over it inflated.
  const closed = new Promise((resolve) => bomber.once('close', (code) => resolve(code)));
  bomber.send(Buffer.alloc(64 * 1024 * 1024), { binary: true, compress: true });
  assert.equal(await closed, 1009);
  const rssAfter = (await stats()).rssBytes;
  assert.ok(rssAfter - rssBefore < 16 * 1024 * 1024, `RSS grew by ${rssAfter - rssBefore} bytes`);
  bystander.ws.send(JSON.stringify({ event: 'ping', data: 'still?' }));
  await until(() => bystander.messages.some((m) => m.event === 'pong'), 'the bystander pong');
  bystander.ws.close();
});
