// Compiled (not run) by types.test.mjs: typical uses of the client must type-check
// against the hand-written stellar-client.d.ts, and misuses must not.
import StellarClient = require('../../stellar-client.js');

async function main(): Promise<void> {
  const client = new StellarClient({
    url: 'ws://127.0.0.1:3000/ws',
    defaultRoom: 'lobby',
    tokenUrl: '/api/ws/token',
    reconnect: { delay: 500, attempts: 5 },
    ackTimeout: 2000,
  });
  const details: StellarClient.Details = await client.connect();
  const id: string = details.id;
  client.on('say', (say) => console.log(say.from, say.message, say.sentAt)).to('lobby');
  client.on('reconnecting', ({ attempt, delay }) => console.log(attempt, delay));
  client.on('error', (error) => console.log(error.code, error.message));
  client.on('state', (bytes: Uint8Array, message) => console.log(bytes.length, message.room)).to(['a', 'b']);
  client.off('state');
  client.once('welcome', (welcome) => console.log(welcome)).to('lobby');
  const isUp: boolean = client.connected;
  await client.emit('move', { x: 1 }).for(['arena:1', 'arena:2']);
  await client.emitBinary('input', new Int8Array([1, -1])).for('arena:1');
  await client.say('hello');
  await client.say('lobby', { text: 'hi' });
  const user = await client.action<{ name: string }>('getUser', { id });
  console.log(user.name);
  client.interceptors.push((params, next) => next());
  client.interceptors.push((params, next) => next({ cached: true }));
  client.interceptors.push((params, next) => next(null, new Error('no')));
  client.interceptors.push((params, next) => next((response: unknown) => ({ wrapped: response })));
  const view: StellarClient.RoomView = await client.roomView('lobby');
  console.log(view.membersCount, await client.join('x'), await client.roomAdd('y'), await client.leave('x'), await client.roomLeave('y'));
  client.on('recovered', ({ room, recovered, offset, epoch }) => {
    if (!recovered) console.log('resync', room, offset, epoch.length);
  }).to('lobby');
  client.on('presence-join', (p) => console.log(p.room, p.id, p.userId ?? 'anonymous'));
  const answer: StellarClient.Recovered = await client.recover('lobby');
  const where: number = answer.offset;
  console.log(where, client.position('lobby')?.epoch);
  const file = await client.file('a.txt');
  console.log(file.mime, client.state, client.rooms.has('lobby'));
  client.setDefaultRoom('other').setDefaultRoom(null);
  await client.disconnect();
  // @ts-expect-error an unknown option
  new StellarClient({ urll: 'x' });
  // @ts-expect-error emitBinary takes bytes
  client.emitBinary('x', 'text');
  // @ts-expect-error recover needs the room
  client.recover();
  // @ts-expect-error state is read-only
  client.state = 'connected';
}

main();
