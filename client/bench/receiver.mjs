// One receiving process of the client benchmark: joins room `bench` with the Stellar
// client (`client`) or a bare `ws` socket doing the same JSON parse (`bare`), says
// "ready", counts `count` messages of event `tick`, then prints its wall time and CPU.
// Usage: node receiver.mjs client|bare <ws url> <count>
import { createRequire } from 'node:module';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);
const StellarClient = require('../stellar-client.js');
const [mode, url, countText] = process.argv.slice(2);
const count = Number(countText);
let received = 0;
let first = null;

function report() {
  const cpu = process.cpuUsage(first.cpu);
  const seconds = Number(process.hrtime.bigint() - first.at) / 1e9;
  process.stdout.write(JSON.stringify({ mode, messages: received, seconds, cpuMicros: cpu.user + cpu.system }) + '\n');
  process.exit(0);
}

function tick() {
  if (first === null) first = { at: process.hrtime.bigint(), cpu: process.cpuUsage() };
  if (++received === count) report();
}

if (mode === 'client') {
  const client = new StellarClient({ url, WebSocket, reconnect: false });
  client.on('tick', tick).to('bench');
  await client.connect();
  await client.join('bench');
} else {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString());
      if (message.event === 'tick' && message.room === 'bench') tick();
      else if (message.event === 'joined-room') resolve();
    });
    ws.once('open', () => ws.send(JSON.stringify({ event: 'join-room', data: 'bench' })));
    ws.once('error', reject);
  });
}
process.stdout.write('ready\n');
