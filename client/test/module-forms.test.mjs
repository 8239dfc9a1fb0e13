// The one file loads as an ES module (through stellar-client.mjs), as CommonJS, and as a
// classic script that sets the global `StellarClient`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import vm from 'node:vm';
import { createRequire } from 'node:module';
import DefaultExport, { StellarClient as NamedExport } from '../stellar-client.mjs';

const require = createRequire(import.meta.url);
const source = new URL('../stellar-client.js', import.meta.url);

test('ES module entry exports the client as default and by name', () => {
  assert.equal(typeof DefaultExport, 'function');
  assert.equal(DefaultExport, NamedExport);
  assert.equal(DefaultExport, require('../stellar-client.js'));
});

test('importing the .js file directly gives the client (Node CommonJS interop)', async () => {
  const { default: imported } = await import('../stellar-client.js');
  assert.equal(imported, require('../stellar-client.js'));
});

test('as a classic script it defines the global StellarClient and nothing else', () => {
  const sandbox = { URL, TextEncoder, TextDecoder, location: { origin: 'https://example.test', href: 'https://example.test/app' } };
  sandbox.globalThis = sandbox;
  vm.createContext(sandbox);
  const before = new Set(Object.keys(sandbox));
  vm.runInContext(fs.readFileSync(source, 'utf8'), sandbox);
  const added = Object.keys(sandbox).filter((k) => !before.has(k));
  assert.deepEqual(added, ['StellarClient']);
  const client = new sandbox.StellarClient();
  assert.equal(client.url.href, 'wss://example.test/ws', 'default URL: this origin, wss under https');
});

test('url forms: http(s) becomes ws(s), relative to the page', () => {
  const Client = require('../stellar-client.js');
  assert.equal(new Client({ url: 'http://h:1/ws' }).url.href, 'ws://h:1/ws');
  assert.equal(new Client({ url: 'https://h/' }).url.href, 'wss://h/');
  assert.equal(new Client({ url: 'ws://h:2' }).url.href, 'ws://h:2/');
  assert.throws(() => new Client(), { code: 'no_url' });
});

test('the file stays small: at most 8 KiB gzipped', async () => {
  const { gzipSync } = await import('node:zlib');
  const size = gzipSync(fs.readFileSync(source), { level: 9 }).length;
  assert.ok(size <= 8192, `${size} bytes gzipped`);
});
