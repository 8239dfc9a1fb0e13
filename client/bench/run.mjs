// The client's own cost (issue 14): one receiving process with the Stellar client
// against one with a bare `ws` socket doing the same parse, each receiving the same
// room broadcast from a publisher process through the real `stellar` binary. Rounds
// alternate bare/client so drift hits both; the median of each is reported as messages/s
// and CPU µs per message, and the client's CPU overhead over bare `ws`.
// Usage: node run.mjs [messages per round] [rounds] [output.json]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Stellar } from '../test/harness.mjs';

const [messages = 200000, rounds = 5, output] = process.argv.slice(2);
const here = (file) => fileURLToPath(new URL(file, import.meta.url));

/** Starts `node script args`; resolves with its process once it printed `ready` (when asked). */
function node(script, args, waitReady) {
  const child = spawn(process.execPath, [here(script), ...args.map(String)], { stdio: ['ignore', 'pipe', 'inherit'] });
  child.lines = [];
  let buffer = '';
  child.stdout.on('data', (d) => {
    buffer += d;
    const parts = buffer.split('\n');
    buffer = parts.pop();
    child.lines.push(...parts);
    child.emit('lines');
  });
  if (!waitReady) return Promise.resolve(child);
  return new Promise((resolve) => {
    child.on('lines', function onLines() {
      if (child.lines.includes('ready')) {
        child.off('lines', onLines);
        resolve(child);
      }
    });
  });
}

async function round(server, mode) {
  const receiver = await node('receiver.mjs', [mode, server.url, messages], true);
  const done = new Promise((resolve) => receiver.once('exit', resolve));
  const publisher = await node('publisher.mjs', [server.url, messages], false);
  await done;
  publisher.kill();
  const line = receiver.lines.find((l) => l.startsWith('{'));
  if (!line) throw new Error(`the ${mode} receiver stopped before ${messages} messages`);
  const result = JSON.parse(line);
  return { ...result, perSecond: result.messages / result.seconds, cpuPerMessage: result.cpuMicros / result.messages };
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

// A receiver that falls behind the publisher must not be closed as a slow consumer
// (1 MiB by default): the server queues for it instead.
const server = await Stellar.start(['--max-backpressure', String(512 << 20)]);
const results = { bare: [], client: [] };
try {
  for (let i = 0; i < rounds; i++) {
    for (const mode of i % 2 ? ['client', 'bare'] : ['bare', 'client']) {
      const r = await round(server, mode);
      results[mode].push(r);
      console.error(`round ${i + 1} ${mode.padEnd(6)} ${r.perSecond.toFixed(0)} msg/s  ${r.cpuPerMessage.toFixed(2)} µs CPU/msg`);
    }
  }
} finally {
  await server.kill();
}
const summary = (mode) => ({
  messagesPerSecond: Math.round(median(results[mode].map((r) => r.perSecond))),
  cpuMicrosPerMessage: Number(median(results[mode].map((r) => r.cpuPerMessage)).toFixed(3)),
});
const report = {
  command: `scripts/bench-client-js ${messages} ${rounds}`,
  date: new Date().toISOString(),
  machine: `${os.cpus()[0].model}, ${os.cpus().length} cores, ${os.type()} ${os.release()}, Node ${process.version}`,
  messagesPerRound: Number(messages),
  rounds: Number(rounds),
  bare: summary('bare'),
  client: summary('client'),
  rawRounds: results,
};
report.clientCpuOverhead = Number((report.client.cpuMicrosPerMessage / report.bare.cpuMicrosPerMessage - 1).toFixed(3));
console.log(JSON.stringify({ bare: report.bare, client: report.client, clientCpuOverhead: report.clientCpuOverhead }, null, 2));
if (output) fs.writeFileSync(output, JSON.stringify(report, null, 2) + '\n');
