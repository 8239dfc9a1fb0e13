// Test harness: starts the real `stellar` binary on a free loopback port below 32768
// (under the kernel's ephemeral range, so a restart can take the same port back), and
// gives tests clients wired to the `ws` package, deadlines and event recorders.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { createRequire } from 'node:module';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);
export const StellarClient = require('../stellar-client.js');
export { WebSocket };

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BINARY = process.env.STELLAR_BIN || path.join(root, 'target/release/stellar');
/** The release build of `server/examples/<name>.rs`. */
export const example = (name) => path.join(root, 'target/release/examples', name);

/** Resolves when `predicate()` holds, polling; rejects after `ms` with `what`. */
export async function until(predicate, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The next `event` of `client` (its first argument), within `ms`. */
export function next(client, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    const handler = (data) => {
      clearTimeout(timer);
      client.off(event, handler);
      resolve(data);
    };
    client.on(event, handler);
  });
}

/** Whether `port` can be bound on loopback now. */
function isFree(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/** Two free ports in 20000..32767 (WebSocket and the TCP protocol's). */
export async function freePorts() {
  for (;;) {
    const port = 20000 + 2 * Math.floor(Math.random() * 6383);
    if ((await isFree(port)) && (await isFree(port + 1))) return [port, port + 1];
  }
}

/** A `stellar` process (or an example's, same flags); `kill()` and `start()` again keep
 * its ports. */
export class Stellar {
  constructor(args = [], binary = BINARY) {
    this.args = args;
    this.binary = binary;
    this.proc = null;
  }

  static async start(args = [], binary = BINARY) {
    const server = new Stellar(args, binary);
    [server.port, server.tcpPort] = await freePorts();
    await server.start();
    return server;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const args = ['--host', '127.0.0.1', '--port', String(this.port), '--tcp-port', String(this.tcpPort),
      '--workers', '2', '--rate-limit', '0', ...this.args];
    this.proc = spawn(this.binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.stderr = '';
    this.proc.stderr.on('data', (d) => { this.stderr += d; });
    const exited = new Promise((resolve) => this.proc.once('exit', resolve));
    await until(async () => {
      if (this.proc.exitCode !== null) throw new Error(`stellar exited: ${this.stderr}`);
      try {
        return (await fetch(`${this.http}/health`)).ok;
      } catch {
        return false;
      }
    }, 'stellar to answer /health', 10000);
    this.exited = exited;
  }

  /** SIGKILL: the server dies without closing anything, as in a crash. */
  async kill() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** A client of this server (reconnecting fast unless told otherwise). */
  client(options = {}) {
    return new StellarClient({ url: this.url, WebSocket, reconnect: { delay: 50, attempts: 100 }, ...options });
  }
}
