/** Where a message sits in its channel: compare `(epoch, offset)` pairs, never bare offsets. */
export interface MessageMeta {
  channel: string;
  epoch: string;
  offset: number;
}

/** A presence member: the Stud.IP user id and what the channel's plugin says about them. */
export interface PresenceInfo {
  user: string;
  info: Record<string, unknown>;
}

export interface HistoryMessage {
  offset: number;
  data: unknown;
}

export interface History {
  epoch: string;
  messages: HistoryMessage[];
}

export interface Published {
  epoch: string;
  offset: number;
}

export interface SubscriptionOptions {
  /** A message of the channel, live or replayed after a reconnect, in offset order, each once. */
  onMessage?(data: unknown, meta: MessageMeta): void;
  /** Another user became a member (channels with presence). */
  onJoin?(info: PresenceInfo): void;
  /** A member's last connection left. */
  onLeave?(info: PresenceInfo): void;
  /** Messages may have been missed (a new epoch, a gap older than history): reload state. */
  onUnrecovered?(): void;
  /** The subscription is live; `recovered` tells whether a resubscribe replayed the gap. */
  onSubscribed?(ctx: { recovered: boolean }): void;
  /** The broker ended the subscription (access revoked); it is over. */
  onUnsubscribed?(reason: string): void;
  /** The broker refused the subscription (`forbidden`, `not_found`, `bad_request`); it is over. */
  onError?(error: StellwerkError): void;
  /** Resubscribe with `recover` after a reconnect (default true). */
  recover?: boolean;
}

export type State = 'disconnected' | 'connecting' | 'connected';
export type TransportName = 'websocket' | 'sse';

export interface StellwerkOptions {
  /** A fixed token (JWT). With `getToken` too, it is used for the first connect. */
  token?: string;
  /** Fetches a fresh token from Stud.IP: at connect, before `expires_at`, after 4001/4004. */
  getToken?: () => Promise<string>;
  /** Transports to use, in order (default `['websocket', 'sse']`). */
  transports?: TransportName[];
  /** URL of `/sse` (default: derived from the WebSocket URL, `ws(s)://host/ws` → `http(s)://host/sse`). */
  sseUrl?: string;
  /** Failed WebSocket attempts (never opened) before SSE is tried (default 2). */
  sseAfter?: number;
  /** Reconnect backoff window in ms (default 1000 doubling to 20000). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** How long a command waits for its reply (and for a connection) in ms (default 10000). */
  timeout?: number;
  /** Interval of the `ping` heartbeat in ms (default 25000; 0 turns it off). */
  pingInterval?: number;
  /** Ask for batched frames (default true). */
  batch?: boolean;
  /** Constructors to use instead of the globals (tests, other runtimes). */
  WebSocket?: typeof WebSocket;
  EventSource?: typeof EventSource;
}

export interface StellwerkEvents {
  connecting: { code: number; reason: string };
  connected: { client?: string; user?: string; transport: TransportName };
  disconnected: { code: number; reason: string };
  error: { code: number | string; message: string };
}

/** A refused or failed command: `code` is the broker's (`forbidden`, …) or `timeout`, `disconnected`, `unsupported`. */
export class StellwerkError extends Error {
  code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'StellwerkError';
    this.code = code;
  }
}
