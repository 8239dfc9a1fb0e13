// TLS (`--tls-cert`/`--tls-key`) from Node: the `ws` package trusting the test's CA,
// the client over wss, and the TCP protocol over `node:tls`, against the real binary
// with a certificate made at test time (server/examples/dev_cert.rs; no key committed).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { BINARY, StellarClient, WebSocket, example, freePorts, next, until } from './harness.mjs';

let dir;
let ca;
let port;
let tcpPort;
let proc;
const clients = [];

/** `ws` trusting the test certificate: what a Node user passes for a private CA. */
class TrustingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { ca });
  }
}

/** Whether a TLS handshake with the server succeeds now. */
function handshakes(p) {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: p, servername: 'localhost', ca }, () => {
      socket.end();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stellar-tls-js-'));
  execFileSync(example('dev_cert'), [dir]);
  ca = fs.readFileSync(path.join(dir, 'cert.pem'));
  [port, tcpPort] = await freePorts();
  proc = spawn(BINARY, ['--host', '127.0.0.1', '--port', String(port), '--tcp-port', String(tcpPort),
    '--workers', '2', '--rate-limit', '0',
    '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')],
  { stdio: ['ignore', 'ignore', 'inherit'] });
  await until(() => handshakes(port), 'the TLS port to handshake', 10000);
});

after(async () => {
  await Promise.all(clients.map((c) => c.disconnect()));
  proc.kill('SIGTERM');
  await new Promise((resolve) => proc.once('exit', resolve));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('ws with the CA gets its welcome over wss and joins a room', async () => {
  const ws = new WebSocket(`wss://localhost:${port}/ws`, { ca });
  const messages = [];
  ws.on('message', (m) => messages.push(JSON.parse(m)));
  await until(() => messages.length >= 1, 'welcome');
  assert.equal(messages[0].event, 'welcome');
  ws.send(JSON.stringify({ event: 'join-room', data: 'secure' }));
  await until(() => messages.length >= 2, 'joined-room');
  assert.deepEqual(messages[1], { event: 'joined-room', data: 'secure' });
  ws.close();
});

test('without the CA the certificate is refused', async () => {
  const ws = new WebSocket(`wss://localhost:${port}/ws`);
  const error = await new Promise((resolve) => ws.once('error', resolve));
  assert.match(String(error.code || error.message), /SELF_SIGNED|self.signed|certificate/i);
});

test('the client relays room events and calls actions over wss', async () => {
  const make = () => {
    const client = new StellarClient({ url: `wss://localhost:${port}/ws`, WebSocket: TrustingWebSocket });
    clients.push(client);
    return client;
  };
  const a = make();
  const b = make();
  await Promise.all([a.connect(), b.connect()]);
  await Promise.all([a.join('tls-room'), b.join('tls-room')]);
  const got = next(b, 'move');
  await a.emit('move', { x: 1 }).for('tls-room');
  assert.deepEqual(await got, { x: 1 });
  assert.deepEqual(await a.action('echo', { secure: true }), { secure: true });
});

test('the TCP protocol speaks TLS on its port', async () => {
  const socket = tls.connect({ host: '127.0.0.1', port: tcpPort, servername: 'localhost', ca });
  const chunks = [];
  socket.on('data', (d) => chunks.push(d));
  await until(() => Buffer.concat(chunks).length >= 7, 'the CONNECT frame');
  const frame = Buffer.concat(chunks);
  const total = frame.readUInt32BE(0);
  const eventLength = frame.readUInt16BE(5);
  assert.equal(frame[4], 0x07, 'CONNECT');
  assert.equal(frame.subarray(7, 7 + eventLength).toString(), 'connect');
  assert.ok(total > 7 + eventLength, 'with the client id as payload');
  socket.end();
});
