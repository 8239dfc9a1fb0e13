// Type declarations of the Stellar JavaScript client (SPEC §7), written by hand beside
// stellar-client.js. Served by the server at /stellar-client.d.ts.

export = StellarClient;
export as namespace StellarClient;

declare class StellarClient {
  constructor(options?: StellarClient.Options);

  /** Rooms this client is in; rejoined after every reconnect. */
  readonly rooms: Set<string>;
  readonly state: 'closed' | 'connecting' | 'connected' | 'reconnecting';
  /** `state === 'connected'` */
  readonly connected: boolean;
  /** The server's id of this connection (from `welcome`), null while not connected. */
  readonly id: string | null;
  defaultRoom: string | null;
  /** JWT sent as the `token` query parameter (and as `Authorization: Bearer` over HTTP). */
  token: string | null;
  /** Run in order before each `action`. */
  interceptors: StellarClient.Interceptor[];

  /** Opens the connection; resolves with `detailsView()` once connected. */
  connect(): Promise<StellarClient.Details>;
  /** Closes for good: no reconnect; pending and queued calls reject with code `closed`. */
  disconnect(): Promise<void>;

  /** Calls an `on_ack` handler: over the socket when connected, else `POST /api/<name>`.
   * Rejects with an Error carrying the server's `code`, or `timeout` after `ackTimeout`. */
  action<T = unknown>(name: string, params?: unknown): Promise<T>;
  /** Chat in `room` (or the default room); members receive a `say` event. */
  say(message: unknown): Promise<void>;
  say(room: string, message: unknown): Promise<void>;
  /** Sends an event; `.for(room | rooms)` relays it to the rooms' other members. */
  emit(event: string, data?: unknown): StellarClient.Outgoing;
  /** Sends a binary event (SPEC §3.1 binary frame); receivers get a Uint8Array. */
  emitBinary(event: string, bytes: ArrayBuffer | ArrayBufferView): StellarClient.Outgoing;

  on(event: 'connected', handler: (details: StellarClient.Details) => void): StellarClient.Subscription;
  on(event: 'disconnected', handler: (info: { code: number; reason: string }) => void): StellarClient.Subscription;
  on(event: 'error', handler: (error: StellarClient.StellarError) => void): StellarClient.Subscription;
  on(event: 'reconnecting', handler: (info: { attempt: number; delay: number }) => void): StellarClient.Subscription;
  on(event: 'reconnect', handler: (info: { attempts: number }) => void): StellarClient.Subscription;
  on(event: 'message' | 'api', handler: (message: StellarClient.Message) => void): StellarClient.Subscription;
  on(event: 'welcome', handler: (welcome: { id: string; message: string; context: string }) => void): StellarClient.Subscription;
  on(event: 'alert', handler: (alert: { message: string }) => void): StellarClient.Subscription;
  on(event: 'say', handler: (say: StellarClient.Say, message: StellarClient.Message) => void): StellarClient.Subscription;
  /** A room's recovery was answered (after a reconnect, or `recover`). `recovered: false`:
   * you missed messages that are gone; resync the room's state. */
  on(event: 'recovered', handler: (answer: StellarClient.Recovered) => void): StellarClient.Subscription;
  /** Members of presence rooms (the server's `presence_rooms`) joining and leaving. */
  on(event: 'presence-join' | 'presence-leave', handler: (presence: StellarClient.Presence) => void): StellarClient.Subscription;
  /** Any other event; `data` is a Uint8Array for binary events. */
  on(event: string, handler: (data: any, message: StellarClient.Message) => void): StellarClient.Subscription;
  /** Like `on`, for the first matching message only. */
  once(event: string, handler: (data: any, message: StellarClient.Message) => void): StellarClient.Subscription;
  /** Removes `handler`, or every handler of `event`. */
  off(event: string, handler?: (...args: any[]) => void): this;

  /** Joins a room; rejects with the server's refusal (`forbidden`, `too_many_rooms`). */
  join(room: string): Promise<string>;
  roomAdd(room: string): Promise<string>;
  leave(room: string): Promise<string>;
  roomLeave(room: string): Promise<string>;
  roomView(room?: string): Promise<StellarClient.RoomView>;
  /** Asks for what was missed in a member room since its last message (rooms with
   * history). Also emitted as `recovered`. Rejects `not_member`, `disconnected` (the
   * reconnect recovers by itself), `invalid_room` (the room keeps no history). */
  recover(room: string): Promise<StellarClient.Recovered>;
  /** `room`'s position (rooms with history): where the last message received, or the
   * join, left this client; undefined until the server said. */
  position(room: string): { offset: number; epoch: string } | undefined;
  /** This connection's details; the first answer is cached until the next connection. */
  detailsView(): Promise<StellarClient.Details>;
  /** A file of the server's `public_dir`. */
  file(path: string): Promise<{ content: string; mime: string; length: number }>;
  setDefaultRoom(room: string | null): this;
}

declare namespace StellarClient {
  interface ReconnectOptions {
    /** First delay in ms. Default 1000. */
    delay?: number;
    /** Growth per attempt. Default 1.5. */
    factor?: number;
    /** Random spread, a fraction of the delay either way. Default 0.2. */
    jitter?: number;
    /** Longest delay in ms. Default 30000. */
    maxDelay?: number;
    /** Attempts before giving up (`error` with code `connect_failed`). Default 10. */
    attempts?: number;
  }

  interface Options {
    /** ws://, wss://, http:// or https:// URL; default: this page's origin + `/ws`. */
    url?: string;
    /** Room joined on connect and used by `say(message)` and `roomView()`. */
    defaultRoom?: string;
    token?: string;
    /** Fetched (with credentials) before each connect; must answer `{token}`. */
    tokenUrl?: string;
    /** `false` turns reconnecting off. */
    reconnect?: false | ReconnectOptions;
    /** ms before an unanswered request rejects with code `timeout`. Default 5000. */
    ackTimeout?: number;
    /** Messages kept while offline; past it calls reject with `queue_full`. Default 100. */
    queueLimit?: number;
    /** A WebSocket constructor (the `ws` package in Node < 22). Default: the global one. */
    WebSocket?: unknown;
    /** Default: the global fetch. */
    fetch?: typeof fetch;
  }

  interface StellarError extends Error {
    /** The server's error code, or the client's: `closed`, `disconnected`, `timeout`,
     * `queue_full`, `bad_message`, `connect_failed`, `invalid_event`, `no_room`, `not_member`. */
    code: string;
  }

  interface Message {
    event: string;
    data?: any;
    room?: string;
    /** Position in the room's history (rooms with history only). */
    offset?: number;
    epoch?: string;
    error?: { code: string; message: string };
    _binary?: true;
  }

  interface Say {
    room: string;
    from: string;
    message: unknown;
    sentAt: number;
  }

  /** The answer to a recovery. `recovered: true`: every missed message was delivered,
   * in order, before it. `recovered: false`: you missed messages that are gone (history
   * too short, expired, or a new epoch; or no position was known): resync the room.
   * `offset`/`epoch`: where the room stands now. */
  interface Recovered {
    room: string;
    recovered: boolean;
    offset: number;
    epoch: string;
  }

  interface Presence {
    room: string;
    /** The connection id of who joined or left. */
    id: string;
    userId: string | null;
  }

  interface RoomView {
    room: string;
    membersCount: number;
    members: string[];
  }

  interface Details {
    id: string;
    remoteAddress: string;
    protocol: string;
    connectedAt: number;
    rooms: string[];
  }

  /** Thenable: settles when the message is written, or rejects (`closed`, `queue_full`). */
  interface Outgoing extends PromiseLike<void> {
    for(room: string | string[]): Outgoing;
    catch(onRejected: (error: StellarError) => unknown): Promise<unknown>;
  }

  interface Subscription {
    /** Only messages of these rooms reach the handler. */
    to(room: string | string[]): Subscription;
  }

  /**
   * `next()` continues, `next(response)` answers without calling the server,
   * `next(null, error)` fails the action, `next(fn)` continues and lets `fn` see (and
   * replace, by returning a value) the response.
   */
  type Interceptor = (
    params: any,
    next: (responseOrHook?: unknown | ((response: any) => unknown), error?: Error) => void,
  ) => void;
}
