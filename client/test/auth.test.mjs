// JWT auth (SPEC §3.4) through the client: `token`, `tokenUrl`, room grants, and the
// HTTP fallback carrying the token, against `stellar --jwt-secret`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { Stellar, next } from './harness.mjs';

const SECRET = 'js-client-test-secret';
let server;
let tokenServer;
let tokenUrl;
let tokensIssued = 0;
const clients = [];

/** An HS256 JWT signed with `secret`. */
function jwt(claims, secret = SECRET) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ exp: Math.floor(Date.now() / 1000) + 300, ...claims })}`;
  return `${body}.${crypto.createHmac('sha256', secret).update(body).digest('base64url')}`;
}

before(async () => {
  server = await Stellar.start(['--jwt-secret', SECRET, '--connect-timeout', '2s']);
  // A StellarStack-style token endpoint: `GET /api/ws/token` answers `{token}`.
  tokenServer = http.createServer((request, response) => {
    if (request.url !== '/api/ws/token') {
      response.writeHead(404).end();
      return;
    }
    tokensIssued += 1;
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify({ token: jwt({ sub: `user-${tokensIssued}`, rooms: ['game:*'] }) }));
  });
  await new Promise((resolve) => tokenServer.listen(0, '127.0.0.1', resolve));
  tokenUrl = `http://127.0.0.1:${tokenServer.address().port}/api/ws/token`;
});

after(async () => {
  await Promise.all(clients.map((c) => c.disconnect()));
  await server.kill();
  await new Promise((resolve) => tokenServer.close(resolve));
});

function client(options) {
  const c = server.client(options);
  clients.push(c);
  return c;
}

test('token: the client authenticates with the token query parameter', async () => {
  const c = client({ token: jwt({ sub: 'ada' }) });
  const details = await c.connect();
  assert.equal(details.id, c.id);
  assert.equal(await c.join('anything'), 'anything', 'no rooms claim grants every room');
});

test('a refused room grant rejects join with forbidden', async () => {
  const c = client({ token: jwt({ sub: 'bob', rooms: ['game:*', 'lobby'] }) });
  await c.connect();
  assert.equal(await c.join('game:7'), 'game:7');
  assert.equal(await c.join('lobby'), 'lobby');
  await assert.rejects(c.join('admin'), { code: 'forbidden', message: /admin/ });
  assert.deepEqual([...c.rooms].sort(), ['game:7', 'lobby']);
  assert.equal(await c.action('echo', 'after refusal'), 'after refusal');
});

test('a bad token fails the connection', async () => {
  const c = client({ token: jwt({ sub: 'eve' }, 'wrong-secret'), reconnect: false });
  const error = next(c, 'error');
  await assert.rejects(c.connect(), { code: 'connect_failed' });
  assert.equal((await error).code, 'connect_failed');
});

test('tokenUrl: a token is fetched before each connect', async () => {
  const before = tokensIssued;
  const c = client({ tokenUrl });
  await c.connect();
  assert.equal(tokensIssued, before + 1);
  await assert.rejects(c.join('lobby'), { code: 'forbidden' });
  assert.equal(await c.join('game:1'), 'game:1');
  const reconnected = next(c, 'reconnect', 10000);
  await server.kill();
  await server.start();
  await reconnected;
  assert.ok(tokensIssued >= before + 2, 'a new token for the new connection');
  assert.deepEqual((await c.detailsView()).rooms, ['game:1']);
});

test('tokenUrl that fails raises error and is retried', async () => {
  const c = client({ tokenUrl: tokenUrl.replace('/api/ws/token', '/nothing'), reconnect: { delay: 20, attempts: 2 } });
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  await assert.rejects(c.connect(), { code: 'connect_failed' });
  assert.deepEqual(errors, ['token_failed', 'token_failed', 'token_failed', 'connect_failed']);
});

test('the HTTP fallback sends the token as a Bearer header', async () => {
  const c = client({ token: jwt({ sub: 'http-user' }) });
  assert.equal(await c.action('echo', { over: 'http' }).then((r) => r.over), 'http');
  const anonymous = client({});
  await assert.rejects(anonymous.action('echo', {}), { code: 'unauthorized' });
  const viaTokenUrl = client({ tokenUrl });
  assert.deepEqual(await viaTokenUrl.action('echo', [1]), [1]);
});
