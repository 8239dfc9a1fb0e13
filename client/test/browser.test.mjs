// The demo page in a real headless Chromium (Debian's `chromium`, driven over the
// DevTools protocol by playwright-core): two pages chat both ways in one room, the
// server is killed and restarted, both pages reconnect by themselves and the next
// messages arrive in both. Any console error or page error fails the test.
// STELLAR_DEMO_SCREENSHOT=path saves a screenshot of the first page there.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { Stellar } from './harness.mjs';

let server;
let browser;
const problems = [];
/** Set while the test restarts the server. */
let restarting = false;

function chromiumPath() {
  for (const name of ['chromium', 'chromium-browser']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`]).toString().trim();
    } catch { /* try the next name */ }
  }
  throw new Error('chromium is not installed (scripts/test-js installs it)');
}

before(async () => {
  server = await Stellar.start(['--demo', 'true']);
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  await server?.kill();
});

/** A page (its own context: its own storage) showing /demo in `room`. */
async function openDemo(label, room) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 780 } });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    // While the server restarts, the page's /stats poll (every second) may fail at the
    // network level: expected then, and only then.
    if (restarting && /^Failed to load resource: net::ERR_CONNECTION_(RESET|REFUSED)/.test(message.text())) return;
    problems.push(`${label} console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`${label} page error: ${error.message}`));
  await page.goto(`${server.http}/demo?room=${room}`);
  await page.fill('#name', label);
  await connected(page);
  return page;
}

function connected(page) {
  return page.waitForFunction(() => document.getElementById('status-text').textContent === 'connected', null, { timeout: 15000 });
}

async function say(page, text) {
  await page.fill('#message-input', text);
  await page.click('#send');
}

/** Waits until `page` shows a message bubble with `text`. */
function shows(page, text) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg .text')].some((n) => n.textContent === t),
    text, { timeout: 10000 });
}

/** Half a minute of traffic from Node clients in other rooms, so the charts and the
 * room list have something to show, then a screenshot of `page`. */
async function screenshot(page, path) {
  const bots = Array.from({ length: 24 }, () => server.client());
  await Promise.all(bots.map((bot, i) => bot.connect().then(() => bot.join(i % 3 ? 'games' : 'random'))));
  const started = Date.now();
  let traffic = true;
  const sending = (async () => {
    while (traffic) {
      const burst = 20 + Math.round(60 * (1 + Math.sin((Date.now() - started) / 4000)));
      for (let i = 0; i < burst; i++) {
        const bot = bots[i % bots.length];
        bot.emit('tick', { i }).for([...bot.rooms][0]);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await page.waitForTimeout(30000);
  await page.screenshot({ path });
  traffic = false;
  await sending;
  await Promise.all(bots.map((bot) => bot.disconnect()));
}

test('two pages chat, survive a server restart, and the next messages arrive in both', async () => {
  const alice = await openDemo('alice', 'demo-room');
  const bob = await openDemo('bob', 'demo-room');
  await alice.waitForFunction(() => document.getElementById('presence').textContent.includes('2 online'), null, { timeout: 10000 });

  await say(alice, 'hi bob, this is alice');
  await shows(bob, 'hi bob, this is alice');
  await say(bob, 'hello alice!');
  await shows(alice, 'hello alice!');

  restarting = true;
  await server.kill();
  await server.start();
  await Promise.all([connected(alice), connected(bob)]);
  await Promise.all([alice, bob].map((page) => page.waitForFunction(
    () => [...document.querySelectorAll('#messages .system')].some((n) => n.textContent === 'Reconnected'), null, { timeout: 15000 })));
  // A poll that left before the restart has failed by now (one poll interval later).
  await alice.waitForTimeout(1500);
  restarting = false;

  await say(alice, 'still there after the restart?');
  await Promise.all([shows(alice, 'still there after the restart?'), shows(bob, 'still there after the restart?')]);
  await say(bob, 'yes, rejoined by myself');
  await Promise.all([shows(alice, 'yes, rejoined by myself'), shows(bob, 'yes, rejoined by myself')]);
  const view = await alice.evaluate(() => window.stellar.roomView('demo-room'));
  assert.equal(view.membersCount, 2);

  // The stats panel is live: its charts have been drawn from /stats samples.
  await alice.waitForFunction(() => document.querySelector('[data-chart="rss"] .line').getAttribute('d'), null, { timeout: 10000 });
  const rss = await alice.textContent('[data-chart="rss"] b');
  assert.match(rss, /MiB$/);
  if (process.env.STELLAR_DEMO_SCREENSHOT) await screenshot(alice, process.env.STELLAR_DEMO_SCREENSHOT);
  assert.deepEqual(problems, []);
});

test('the page loads the client from the binary as a classic script and as a module', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (error) => problems.push(`module page error: ${error.message}`));
  await page.goto(`${server.http}/stellar-client`);
  const fromModule = await page.evaluate(async () => {
    const module = await import('/stellar-client.mjs');
    const client = new module.default({ url: location.origin });
    const details = await client.connect();
    const echoed = await client.action('echo', { via: 'module' });
    await client.disconnect();
    return { same: module.default === globalThis.StellarClient, id: details.id, echoed };
  });
  assert.equal(fromModule.same, true);
  assert.match(fromModule.id, /^\d+-/);
  assert.deepEqual(fromModule.echoed, { via: 'module' });
  await context.close();
  assert.deepEqual(problems, []);
});

test('a page on another origin calls actions over HTTP where allowed_origins lists it', async () => {
  // The page is on `server`'s origin; the API servers are other origins (other ports).
  const pageOrigin = server.http;
  const listing = await Stellar.start(['--allowed-origins', pageOrigin]);
  const elsewhere = await Stellar.start(['--allowed-origins', 'https://elsewhere.example']);
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (error) => problems.push(`cors page error: ${error.message}`));
    await page.goto(`${pageOrigin}/stellar-client`);
    const outcome = await page.evaluate(async ([listed, unlisted]) => {
      const { default: StellarClient } = await import('/stellar-client.mjs');
      // Not connected: action() takes the HTTP fallback, a credentialed cross-origin
      // POST with a JSON body (so the browser sends a preflight first).
      const call = (origin) => new StellarClient({ url: origin, reconnect: false })
        .action('echo', { from: 'another origin' })
        .then((data) => ({ data }), (error) => ({ error: error.message }));
      return { listed: await call(listed), unlisted: await call(unlisted) };
    }, [listing.http, elsewhere.http]);
    assert.deepEqual(outcome.listed, { data: { from: 'another origin' } });
    assert.ok(outcome.unlisted.error, `refused: ${JSON.stringify(outcome.unlisted)}`);
    await context.close();
  } finally {
    await listing.kill();
    await elsewhere.kill();
  }
  // The browser reports the refused call on the console; only page errors count here.
  assert.deepEqual(problems.filter((p) => p.startsWith('cors')), []);
});
