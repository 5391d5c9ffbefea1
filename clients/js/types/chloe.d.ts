/**
 * chloe-client: the browser client of Chloe, the realtime web server.
 *
 * ```ts
 * import { Chloe } from 'chloe-client';
 * const chloe = new Chloe({ host: 'localhost', port: 8901 });
 * chloe.subscribe<{ text: string }>('room', (message, meta) => console.log(message.text, meta.id));
 * chloe.connect();
 * ```
 *
 * The same client is what chloed serves at `/chloe.js` (`window.Chloe`).
 */

/** The transports, in the order tried by default. */
export type TransportName = 'websocket' | 'sse' | 'longpoll' | 'jsonp';

/** A send's reference: the client makes a 128-bit hex string unless given one. */
export type Ref = string | number;

/** Error codes of chloed's `error` frames. */
export type ServerErrorCode =
  | 'bad_frame'
  | 'unknown_type'
  | 'too_large'
  | 'invalid_channel'
  | 'forbidden'
  | 'too_many_subscriptions'
  | 'rate_limited'
  | 'no_application'
  | 'upstream_rejected'
  | 'upstream_failed'
  | 'slow_consumer'
  | 'shutting_down'
  | 'unknown_session'
  | TokenErrorCode;

/** The codes refusing a connection token: the session ends after them. */
export type TokenErrorCode =
  | 'token_required'
  | 'token_invalid'
  | 'token_expired'
  | 'token_revoked'
  | 'too_many_connections';

/**
 * Errors the client makes itself: `token_unavailable` (a getToken threw or
 * rejected), `unsubscribed` (the server ended a subscription that has no
 * onunsubscribed), `disconnected` (the app ended the connection for good).
 */
export type ClientErrorCode = 'token_unavailable' | 'unsubscribed' | 'disconnected';

/** Any code `onerror` and a send's ack may see (a newer server may say others). */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** Why the server ended a subscription (`unsubscribed` with a reason, or the client's own). */
export type UnsubscribedReason = 'server' | 'token_expired' | 'token_unavailable' | (string & {});

// ---------------------------------------------------------------- frames

/** The first frame of every connection. */
export interface ConnectedFrame {
  type: 'connected';
  session: string;
  /** Seconds between the server's heartbeats. */
  heartbeat: number;
  /** Frames a second the session may send, when the server limits it. */
  rate_limit?: number;
  burst?: number;
}

/** A presence channel's member: a channel token's `user`. */
export interface PresenceMember {
  id: string;
  info?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface SubscribedFrame {
  type: 'subscribed';
  channel: string;
  /** Whether the messages since the `since` asked for could all be replayed. */
  recovered: boolean;
  /** On presence channels: who is there, one per user. */
  members?: PresenceMember[];
  /** A subscription the server made for this session (the app's control API). */
  server?: boolean;
}

export interface UnsubscribedFrame {
  type: 'unsubscribed';
  channel: string;
  reason?: UnsubscribedReason;
}

export interface MessageFrame<T = unknown> {
  type: 'message';
  /** null for a message to everyone, to this session or to the user. */
  channel: string | null;
  id: string | null;
  /** Set for a message to the user (`/send user=`). */
  user?: string;
  data: T;
}

export interface PresenceFrame {
  type: 'presence';
  channel: string;
  event: 'join' | 'leave';
  member: PresenceMember;
}

export interface AckFrame {
  type: 'ack';
  ref: Ref;
}

export interface AcceptedFrame {
  type: 'accepted';
  ref: Ref;
}

export interface PongFrame {
  type: 'pong';
}

export interface ErrorFrame {
  type: 'error';
  code: ErrorCode;
  message: string;
  ref?: Ref;
  channel?: string;
  /** For `unsubscribed` and `disconnected`: why. */
  reason?: string;
}

export interface AuthenticatedFrame {
  type: 'authenticated';
  /** The connection token's `sub`. */
  user: string;
  /** The user cursor: where the user's messages stand. */
  id: string | null;
  /** The token's `exp`, in seconds since the epoch. */
  expires: number;
}

export interface TokenExpiringFrame {
  type: 'token_expiring';
  expires: number;
  /** A channel's token, or else the connection's. */
  channel?: string;
}

export interface RefreshedFrame {
  type: 'refreshed';
  expires: number;
  channel?: string;
}

export interface DisconnectFrame {
  type: 'disconnect';
  reason: string;
  /** false: the client stops for good (a ban). */
  reconnect: boolean;
}

/** Every frame chloed sends a browser. */
export type ServerFrame =
  | ConnectedFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | MessageFrame
  | PresenceFrame
  | AckFrame
  | AcceptedFrame
  | PongFrame
  | ErrorFrame
  | AuthenticatedFrame
  | TokenExpiringFrame
  | RefreshedFrame
  | DisconnectFrame;

export interface SubscribeFrame {
  type: 'subscribe';
  channel: string;
  since?: string;
  token?: string;
}

export interface UnsubscribeFrame {
  type: 'unsubscribe';
  channel: string;
}

export interface SendFrame<T = unknown> {
  type: 'send';
  data: T;
  ref: Ref;
  channel?: string;
}

export interface PingFrame {
  type: 'ping';
}

export interface AuthFrame {
  type: 'auth';
  token: string;
  since?: string;
}

export interface RefreshFrame {
  type: 'refresh';
  token: string;
  channel?: string;
}

/** Every frame a browser sends chloed. */
export type ClientFrame = SubscribeFrame | UnsubscribeFrame | SendFrame | PingFrame | AuthFrame | RefreshFrame;

// ---------------------------------------------------------------- options and callbacks

/** A token, or a Promise of one. */
export type TokenResult = string | PromiseLike<string>;

/**
 * What the client takes from its surroundings, `window` by default. Tests
 * (and runtimes that keep these elsewhere) hand their own; every member is
 * looked up on this object, none on the real global.
 */
export interface ChloeGlobals {
  WebSocket?: new (url: string) => any;
  EventSource?: new (url: string) => any;
  fetch?: (url: string, init?: any) => Promise<any>;
  AbortController?: new () => any;
  setTimeout(handler: () => void, timeout?: number): any;
  clearTimeout(id: any): void;
  Date: { now(): number };
  Math: { random(): number };
  crypto?: { getRandomValues(array: any): unknown };
  location?: { protocol?: string; hostname?: string; port?: string };
  document?: any;
  addEventListener?(type: 'load', listener: () => void): void;
  removeEventListener?(type: 'load', listener: () => void): void;
  indexedDB?: any;
  IDBKeyRange?: any;
  localStorage?: any;
  console?: { error(...data: unknown[]): void };
}

export interface ChloeOptions {
  /** Default: the page's host name. */
  host?: string;
  /** Default: the page's port (443 or 80 with none). */
  port?: number;
  /** wss/https; default: as the page. */
  secure?: boolean;
  /** A prefix before /ws, /sse, ..., behind a proxy. */
  path?: string;
  /** Default ['websocket', 'sse', 'longpoll', 'jsonp'], tried in this order. */
  transports?: TransportName[];
  /** Reconnect by itself after a lost connection; default true. */
  reconnect?: boolean;
  /** The reconnect backoff, in ms: default 250 and 10000. */
  minDelay?: number;
  maxDelay?: number;
  /** ms a transport may take to say `connected` before the next is tried; default 10000. */
  connectTimeout?: number;
  /** ms after which an unanswered long-poll or JSONP poll is repeated; default 65000. */
  pollTimeout?: number;
  /** 'persistent': unanswered sends also kept in IndexedDB (or localStorage), sent again after a reload. */
  outbox?: 'memory' | 'persistent';
  /** A connection token (a JWT with `sub`): the connection is the user's. */
  token?: string;
  /** Called before every connection and when the token runs out; wins over `token`. */
  getToken?: () => TokenResult;
  /** What the client runs on instead of `window` (tests, other runtimes). */
  globals?: ChloeGlobals;
}

/** The second argument of message callbacks. */
export interface MessageMeta {
  /** The channel, or null for a message to everyone, to this session or to the user. */
  channel: string | null;
  id: string | null;
  /** Set on messages to the user. */
  user?: string;
}

export type MessageCallback<T = unknown> = (this: Chloe, data: T, meta: MessageMeta) => void;

/** A send's answer: err null once the app took it, else the `error` frame. */
export type AckCallback = (this: Chloe, err: ErrorFrame | null, frame: AckFrame | null) => void;

export interface SendOptions {
  /** The channel the message is about, relayed to the app. */
  channel?: string;
  /** Default: a random 128-bit hex string. */
  ref?: Ref;
  ack?: AckCallback;
  /** A durable relay spool has the send: it leaves the outbox. */
  accepted?: (this: Chloe, frame: AcceptedFrame) => void;
}

export interface SubscribeOptions {
  /** A channel token (private-, presence- channels, namespaces that require one). */
  token?: string;
  /** The id of the last message the page has: only later ones come. */
  since?: string;
  /** A fresh channel token: when there is none, before each resubscribe, and on token_expiring. */
  getToken?: (this: Chloe, channel: string) => TokenResult;
  /** The server ended the subscription (else onerror hears `unsubscribed`). */
  onunsubscribed?: (this: Chloe, reason: UnsubscribedReason) => void;
}

/** What a transport factory returns (see `Chloe.transports`). */
export interface Connection {
  ready: boolean;
  closed: boolean;
  send(frame: ClientFrame): void;
  close(): void;
  onframe(frame: ServerFrame): void;
  onclose: (() => void) | null;
}

export interface TransportFactory {
  (chloe: Chloe): Connection | null;
  /** The token goes in an `auth` frame rather than in the URL. */
  authFrame?: boolean;
  /** Opened only once the page has loaded. */
  afterLoad?: boolean;
}

export declare class Chloe {
  constructor(options?: ChloeOptions);

  /** The transports by name; a factory returns null when the browser cannot use it. */
  static transports: Record<TransportName, TransportFactory>;

  readonly secure: boolean;
  readonly host: string;
  readonly port: number;
  readonly path: string;
  readonly transports: TransportName[];
  readonly reconnect: boolean;
  readonly connectTimeout: number;
  readonly pollTimeout: number;
  /** The transport of the open connection, or null. */
  readonly transport: TransportName | null;
  /** This browser's session id, once connected. */
  readonly session: string | null;
  /** The connection token's `sub`, once authenticated. */
  readonly user: string | null;

  /** Messages to everyone, to this session, to the user, and of channels subscribed without a callback. */
  onmessage<T = unknown>(fn: MessageCallback<T>): this;
  /** A connection was lost (the client reconnects unless told not to). */
  onclose(fn: (this: Chloe) => void): this;
  onerror(fn: (this: Chloe, error: ErrorFrame) => void): this;
  /** Every `subscribed`, also after each resubscribe. */
  onsubscribed(fn: (this: Chloe, frame: SubscribedFrame) => void): this;
  onpresence(fn: (this: Chloe, frame: PresenceFrame) => void): this;
  /** With a connection token: on every `authenticated`. */
  onauthenticated(fn: (this: Chloe, user: string, frame: AuthenticatedFrame) => void): this;
  /** The app ended the connection; reconnect false: the client has stopped. */
  ondisconnect(fn: (this: Chloe, reason: string, reconnect: boolean) => void): this;

  /** Opens the connection; `callback` runs once, on the first (authenticated) one. */
  connect(callback?: (this: Chloe) => void): this;
  /** Stops every connection, poll and reconnect, until connect() again. */
  close(): void;
  /** Sends `data` (JSON) to the app; the send stays in the outbox until answered. */
  send<T = unknown>(data: T, options?: SendOptions): Ref;
  /** Subscribes now or on connecting, and again after every reconnect. */
  subscribe<T = unknown>(channel: string, callback?: MessageCallback<T> | null, options?: SubscribeOptions): void;
  unsubscribe(channel: string): void;
  /** The channels held: the page's own and those the server subscribed it to. */
  channels(): string[];
}

export default Chloe;
