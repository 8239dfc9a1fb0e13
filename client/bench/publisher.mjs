// The benchmark's publisher: a bare `ws` socket in room `bench` sending `count` `tick`
// events to the room as fast as the socket drains (kept under 1 MiB buffered).
// Usage: node publisher.mjs <ws url> <count>
import WebSocket from 'ws';

const [url, countText] = process.argv.slice(2);
const count = Number(countText);
const ws = new WebSocket(url);
await new Promise((resolve) => {
  ws.on('message', (data) => {
    if (JSON.parse(data.toString()).event === 'joined-room') resolve();
  });
  ws.once('open', () => ws.send(JSON.stringify({ event: 'join-room', data: 'bench' })));
});
let sent = 0;
function pump() {
  while (sent < count && ws.bufferedAmount < 1 << 20) {
    const data = { seq: sent, x: Math.random() * 1000, y: Math.random() * 1000, player: 'player-' + (sent % 64), alive: true };
    ws.send(JSON.stringify({ event: 'tick', data, room: 'bench' }));
    sent += 1;
  }
  if (sent < count) setImmediate(pump);
  else ws.once('close', () => process.exit(0));
}
pump();
