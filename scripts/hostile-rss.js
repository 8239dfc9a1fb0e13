// Peak server memory under the two abusive loads of the hostile-input suite, against the
// real `stellar` binary: (1) a 10 000-message flood from one client, (2) a member that
// never reads while its room is flooded with 20 000 x 1 KiB messages (it must be closed
// as a slow consumer while the others keep receiving). Reads VmHWM/VmRSS of the server
// from /proc. Usage: node scripts/hostile-rss.js flood|slow PORT SERVER_PID  (run by
// scripts/hostile-rss: the flood against default limits, the slow consumer with the rate
// limit off so the publisher itself is not cut off).
'use strict';
const fs = require('fs');
const path = require('path');
const WebSocket = require(path.join(__dirname, 'peers/node-ws/node_modules/ws'));

const [mode, port, pid] = process.argv.slice(2);
const url = `ws://127.0.0.1:${port}/`;
const mem = () => {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k) => Number(s.match(new RegExp(`${k}:\\s+(\\d+)`))[1]);
  return { rss: kib('VmRSS') * 1024, hwm: kib('VmHWM') * 1024 };
};
const open = () => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  ws.once('message', () => resolve(ws)); // welcome
  ws.once('error', reject);
});
const join = (ws, room) => new Promise((resolve) => {
  ws.on('message', function h(m) { if (JSON.parse(m).event === 'joined-room') { ws.off('message', h); resolve(); } });
  ws.send(JSON.stringify({ event: 'join-room', data: room }));
});
const closed = (ws) => new Promise((resolve) => ws.once('close', (code, reason) => resolve([code, reason.toString()])));

(async () => {
  const report = { before: mem() };
  if (mode === 'flood') {
  // 1. Flood: 10 000 messages as fast as possible from one client (closed at the rate limit).
  const flooder = await open();
  const floodClosed = closed(flooder);
  for (let i = 0; i < 10000; i++) flooder.send(JSON.stringify({ event: 'spam', data: i }));
  report.flood = { close: await floodClosed, ...mem() };
  console.log(JSON.stringify(report));
  process.exit(0);
  }
  // 2. Slow consumer: one member pauses its socket while the room is flooded.
  const [pub, good, slow] = [await open(), await open(), await open()];
  for (const c of [pub, good, slow]) await join(c, 'flood');
  slow._socket.pause();
  const slowClosed = new Promise((resolve) => {
    slow.once('close', (code, reason) => resolve([code, reason.toString()]));
  });
  let received = 0;
  const allIn = new Promise((resolve) => good.on('message', () => { if (++received === 20000) resolve(); }));
  const blob = 'x'.repeat(1024);
  for (let i = 0; i < 20000; i++) {
    pub.send(JSON.stringify({ event: 'blob', room: 'flood', data: { i, blob } }));
    if (i % 500 === 499) await new Promise((r) => setTimeout(r, 5)); // let the good reader keep up
  }
  await allIn;
  report.slowConsumer = { goodReceived: received, ...mem() };
  slow._socket.resume();
  report.slowConsumer.close = await slowClosed;
  console.log(JSON.stringify(report));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
