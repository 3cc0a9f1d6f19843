import { backoff } from './backoff.js';
import { safely } from './safely.js';
import { Subscription } from './subscription.js';
import type { State, StellwerkEvents, StellwerkOptions, SubscriptionOptions, TransportName } from './types.js';
import { StellwerkError } from './types.js';

type Reply = Record<string, unknown>;
type Listener<K extends keyof StellwerkEvents> = (event: StellwerkEvents[K]) => void;
/** Called synchronously with the reply, so that pushes behind it in a batch come after it. */
type Done = (error: StellwerkError | undefined, reply: Reply) => void;
interface Pending {
  done: Done;
  timer: ReturnType<typeof setTimeout>;
}

/** Close codes after which the client stops instead of reconnecting. */
const CODE_UNAUTHORIZED = 4001;
const CODE_DISCONNECTED = 4003;
const CODE_EXPIRED = 4004;

/**
 * A connection to Stellwerk, over WebSocket or, where that fails, Server-Sent Events.
 *
 * ```js
 * const sw = new Stellwerk('wss://broker.example.org/ws', { getToken: async () => token });
 * sw.subscribe('course:<id>:news', { onMessage: (data) => show(data), recover: true });
 * sw.connect();
 * ```
 *
 * Events (`sw.on(name, fn)`, which returns a function that removes `fn`):
 * - `connecting` `{code, reason}`: the client is (re)connecting, and why;
 * - `connected` `{client, user, transport}`;
 * - `disconnected` `{code, reason}`: stopped, no reconnect (`disconnect()`, 4003, a refused
 *   token, the page going into the back/forward cache);
 * - `error` `{code, message}`: a refused token, a failed `getToken()`, a failed refresh.
 */
export class Stellwerk {
  /** `disconnected`, `connecting` or `connected`. */
  state: State = 'disconnected';
  /** The transport of the current connection. */
  transport: TransportName | undefined;
  readonly url: string;
  private readonly o: StellwerkOptions;
  private token: string | undefined;
  private needToken = false;
  private want = false;
  private attempts = 0;
  private gen = 0;
  private authRetried = false;
  private wsOpened = false;
  private wsFailures = 0;
  private expiresAt: number | undefined;
  private serverClose: { code: number; reason: string } | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private ws: WebSocket | undefined;
  private es: EventSource | undefined;
  private cursor: string | undefined;
  private cursorKey = '';
  private resyncQueued = false;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private waiting: Array<(ok: boolean) => void> = [];
  private readonly subs = new Map<string, Subscription>();
  private readonly listeners: { [K in keyof StellwerkEvents]?: Array<Listener<K>> } = {};
  private readonly pageEvents: Array<[string, (e: Event) => void]>;

  constructor(url: string, options: StellwerkOptions = {}) {
    this.url = url;
    this.o = options;
    this.token = options.token;
    this.pageEvents = [
      ['pagehide', () => this.suspend()],
      ['pageshow', (e) => (e as PageTransitionEvent).persisted && this.resume()],
      ['offline', () => this.lost(1006, 'offline', false)],
      ['online', () => this.resume()],
    ];
  }

  /** Listens to a state event; returns a function that stops listening. */
  on<K extends keyof StellwerkEvents>(event: K, fn: Listener<K>): () => void {
    ((this.listeners[event] ??= []) as Array<Listener<K>>).push(fn);
    return () => this.off(event, fn);
  }

  off<K extends keyof StellwerkEvents>(event: K, fn: Listener<K>): void {
    const list = this.listeners[event] as Array<Listener<K>> | undefined;
    if (list) this.listeners[event] = list.filter((f) => f !== fn) as never;
  }

  /** Connects, and keeps reconnecting until `disconnect()` or a final close (4001 twice, 4003). */
  connect(): void {
    if (this.want) return;
    this.want = true;
    this.attempts = 0;
    this.authRetried = false;
    if (typeof addEventListener === 'function') for (const [name, fn] of this.pageEvents) addEventListener(name, fn);
    this.setState('connecting', { code: 0, reason: 'connect called' });
    this.open();
  }

  /** Closes the connection and stops reconnecting. Subscriptions stay, to recover on `connect()`. */
  disconnect(): void {
    this.stop(1000, 'disconnect called');
  }

  /**
   * Subscribes to `channel`; returns the {@link Subscription} at once. It goes live when the
   * client is connected (or at once when it is) and is resubscribed with `recover` after each
   * reconnect. A channel can be subscribed once per client.
   */
  subscribe(channel: string, options: SubscriptionOptions = {}): Subscription {
    if (this.subs.has(channel)) throw new StellwerkError('bad_request', `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this.subs.set(channel, sub);
    if (this.transport === 'websocket' && this.state === 'connected') sub._subscribe();
    else if (this.transport === 'sse') this._resync();
    return sub;
  }

  /** The subscription of `channel`, if there is one. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  // ---- used by Subscription -------------------------------------------------------------

  /** @internal sends a command and resolves with its reply (rejects on an `error` reply). */
  _call(type: string, fields: Reply): Promise<Reply> {
    if (this.transport === 'sse' && this.state === 'connected')
      return Promise.reject(new StellwerkError('unsupported', `${type} needs a WebSocket; this client is on SSE`));
    if (!this._connected()) {
      if (!this.want) return Promise.reject(new StellwerkError('disconnected', 'not connected'));
      return new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => done(false), this.timeout());
        const done = (ok: boolean) => {
          clearTimeout(timer);
          this.waiting = this.waiting.filter((w) => w !== done);
          resolve(ok);
        };
        this.waiting.push(done);
      }).then((ok) =>
        ok ? this._call(type, fields) : Promise.reject(new StellwerkError('timeout', `no connection for ${type}`)),
      );
    }
    return this.send(type, fields);
  }

  /** @internal */
  _connected(): boolean {
    return this.state === 'connected' && this.transport === 'websocket';
  }

  /** @internal */
  _transport(): TransportName | undefined {
    return this.transport;
  }

  /** @internal a reconnect delay */
  _delay(attempt: number): number {
    return backoff(attempt, this.o.minReconnectDelay ?? 1000, this.o.maxReconnectDelay ?? 20000);
  }

  /** @internal the client forgets a subscription the server ended */
  _forget(sub: Subscription): void {
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
  }

  /** @internal the application unsubscribed */
  _unsubscribe(sub: Subscription): void {
    this._forget(sub);
    if (this._connected()) this.send('unsubscribe', { channel: sub.channel }).catch(() => undefined);
    else if (this.transport === 'sse') this._resync();
  }

  /** @internal SSE: the set of channels changed; open a stream for the new set. */
  _resync(): void {
    if (this.resyncQueued) return;
    this.resyncQueued = true;
    queueMicrotask(() => {
      this.resyncQueued = false;
      if (this.transport === 'sse' && this.want && this.state !== 'disconnected') this.openSse();
    });
  }

  // ---- the state machine ----------------------------------------------------------------

  private emit<K extends keyof StellwerkEvents>(event: K, payload: StellwerkEvents[K]): void {
    for (const fn of (this.listeners[event] ?? []) as Array<Listener<K>>) safely(fn, payload);
  }

  private setState(state: 'connecting', payload: StellwerkEvents['connecting']): void {
    if (this.state === state) return;
    this.state = state;
    this.emit(state, payload);
  }

  private timeout(): number {
    return this.o.timeout ?? 10000;
  }

  private useSse(): boolean {
    const transports = this.o.transports ?? ['websocket', 'sse'];
    const canWs = transports.includes('websocket') && !!(this.o.WebSocket ?? globalThis.WebSocket);
    const canSse = transports.includes('sse') && !!(this.o.EventSource ?? globalThis.EventSource);
    if (!canWs) return canSse;
    // Once a WebSocket has opened, failures are outages, not a blocked transport.
    return canSse && !this.wsOpened && this.wsFailures >= (this.o.sseAfter ?? 2);
  }

  /** One connection attempt. */
  private async open(): Promise<void> {
    clearTimeout(this.reconnectTimer);
    const gen = ++this.gen;
    this.serverClose = undefined;
    if ((this.needToken || this.token === undefined) && this.o.getToken) {
      try {
        const getToken = this.o.getToken;
        this.token = await new Promise<string>((resolve, reject) => {
          setTimeout(() => reject(new Error('no token in time')), this.timeout());
          getToken().then(resolve, reject);
        });
        this.needToken = false;
      } catch (e) {
        if (gen !== this.gen) return;
        this.emit('error', { code: 'token', message: `getToken failed: ${String(e)}` });
        this.retry();
        return;
      }
      if (gen !== this.gen || !this.want) return;
    }
    if (this.useSse()) this.openSse();
    else this.openWs(gen);
  }

  private openWs(gen: number): void {
    this.closeTransport();
    const Ws = this.o.WebSocket ?? globalThis.WebSocket;
    let ws: WebSocket;
    try {
      ws = new Ws(this.url);
    } catch (e) {
      this.wsFailures++;
      this.lost(1006, String(e));
      return;
    }
    this.ws = ws;
    this.transport = 'websocket';
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.wsOpened = true;
      this.wsFailures = 0;
      const fields: Reply = { batch: this.o.batch ?? true };
      if (this.token !== undefined) fields.token = this.token;
      this._command('connect', fields, (e, r) => {
        if (gen !== this.gen) return;
        if (!e) this.connected(r, 'websocket');
        else if (e.code === 'timeout') this.lost(1006, 'no reply to connect');
        // An `unauthorized` or `rate_limited` reply is followed by the close (4001, 4009).
      });
    };
    ws.onmessage = (e) => {
      for (const line of String(e.data).split('\n')) if (line) this.handle(JSON.parse(line) as Reply);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      if (!opened) this.wsFailures++;
      this.lost(e.code, e.reason);
    };
  }

  private openSse(): void {
    const Es = this.o.EventSource ?? globalThis.EventSource;
    const channels = [...this.subs.keys()];
    const key = channels.slice().sort().join('\n');
    this.closeTransport();
    this.transport = 'sse';
    if (!channels.length) {
      // Nothing to stream: an SSE connection is a set of channels.
      this.connected({}, 'sse');
      return;
    }
    const base = this.o.sseUrl ?? this.url.replace(/^ws/, 'http').replace(/\/ws(\?.*)?$/, '/sse');
    const params = new URLSearchParams();
    for (const c of channels) params.append('channel', c);
    if (this.token !== undefined) params.set('token', this.token);
    // A cursor fits only the set of channels it was made for.
    if (this.cursor && key === this.cursorKey) params.set('lastEventId', this.cursor);
    const es = new Es(base + (base.includes('?') ? '&' : '?') + params.toString());
    this.es = es;
    let opened = false;
    const listen = (type: string, fn: (data: Reply, e: MessageEvent) => void) =>
      es.addEventListener(type, (e) => {
        if (this.es !== es) return;
        const m = e as MessageEvent;
        if (m.lastEventId) {
          this.cursor = m.lastEventId;
          this.cursorKey = key;
        }
        fn(JSON.parse(String(m.data)) as Reply, m);
      });
    es.onopen = () => {
      if (this.es !== es) return;
      opened = true;
      this.connected({}, 'sse');
    };
    listen('subscribed', (d) => {
      this.subs.get(d.channel as string)?._subscribed(d.epoch as string, d.offset as number, d.recovered as boolean | undefined);
    });
    for (const type of ['message', 'join', 'leave', 'unsubscribed', 'disconnect']) listen(type, (d) => this.handle(d));
    listen('unrecovered', () => undefined); // `subscribed` carries `recovered: false` for each such channel
    es.onerror = () => {
      if (this.es !== es) return;
      // Take reconnecting over from EventSource: backoff, a fresh token, the cursor in the URL.
      if (!opened) {
        if (this.o.getToken) this.needToken = true;
        if (!this.wsOpened) this.wsFailures = 0; // give the WebSocket another chance
        this.diagnose(es.url);
      }
      this.lost(1006, 'event stream failed');
    };
  }

  /**
   * EventSource hides why a stream was refused; the broker says it in a JSON body (401, 403
   * for a channel the plugin denies, 404, 429, 503). Ask once more to report it as `error`.
   */
  private diagnose(url: string): void {
    if (typeof fetch !== 'function') return;
    const ctl = new AbortController();
    fetch(url, { signal: ctl.signal })
      .then(async (r) => {
        if (!r.ok) {
          const body = (await r.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
          this.emit('error', { code: body.error?.code ?? r.status, message: body.error?.message ?? `HTTP ${r.status}` });
        }
      })
      .catch(() => undefined)
      .finally(() => ctl.abort());
  }

  private connected(r: Reply, transport: TransportName): void {
    this.attempts = 0;
    this.authRetried = false;
    this.expiresAt = r.expires_at as number | undefined;
    const was = this.state;
    this.state = 'connected';
    if (transport === 'websocket') {
      this.scheduleRefresh();
      const every = this.o.pingInterval ?? 25000;
      if (every > 0)
        this.pingTimer = setInterval(
          () => this.send('ping', {}).catch((e: StellwerkError) => e.code === 'timeout' && this.lost(1006, 'no reply to ping')),
          every,
        );
      for (const sub of [...this.subs.values()]) sub._subscribe();
    }
    for (const w of this.waiting.slice()) w(true);
    // Last, so that what a listener subscribes is not subscribed twice.
    if (was !== 'connected') this.emit('connected', { client: r.client as string | undefined, user: r.user as string | undefined, transport });
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    if (!this.o.getToken || this.expiresAt === undefined) return;
    const remaining = this.expiresAt - Date.now() / 1000;
    // Refresh halfway through a short token, a minute before the end of a long one.
    const delay = Math.max(0, remaining - Math.min(60, remaining / 2)) * 1000;
    const gen = this.gen;
    this.refreshTimer = setTimeout(async () => {
      try {
        const token = await this.o.getToken!();
        if (gen !== this.gen) return;
        const r = await this.send('refresh', { token });
        if (gen !== this.gen) return;
        const before = this.expiresAt!;
        this.token = token;
        this.expiresAt = r.expires_at as number;
        // A token that ends no later than the last one: getToken has nothing newer; the
        // connection ends at expiry (4004) and comes back with a token fetched then.
        if (this.expiresAt > before) this.scheduleRefresh();
      } catch (e) {
        // The connection ends at expiry (4004) and comes back with a new token.
        if (gen === this.gen) this.emit('error', { code: (e as StellwerkError).code ?? 'token', message: `token refresh failed: ${String(e)}` });
      }
    }, Math.min(delay, 2 ** 31 - 1));
  }

  /** @internal sends a command on the live WebSocket; `done` gets the reply or the error. */
  _command(type: string, fields: Reply, done: Done): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return done(new StellwerkError('disconnected', 'not connected'), {});
    const id = this.nextId++;
    const timer = setTimeout(() => {
      this.pending.delete(id);
      done(new StellwerkError('timeout', `no reply to ${type}`), {});
    }, this.timeout());
    this.pending.set(id, { done, timer });
    ws.send(JSON.stringify({ id, type, ...fields }));
  }

  private send(type: string, fields: Reply): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => this._command(type, fields, (e, r) => (e ? reject(e) : resolve(r))));
  }

  /** A frame from the broker: a reply (with `id`) or a push. */
  private handle(m: Reply): void {
    if (typeof m.id === 'number') {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      p.done(m.type === 'error' ? new StellwerkError(m.code as string, m.message as string) : undefined, m);
      return;
    }
    const sub = this.subs.get(m.channel as string);
    switch (m.type) {
      case 'message':
        sub?._message(m.epoch as string, m.offset as number, m.data);
        break;
      case 'join':
        safely(sub?.opts.onJoin, { user: m.user as string, info: m.info as Record<string, unknown> });
        break;
      case 'leave':
        safely(sub?.opts.onLeave, { user: m.user as string, info: m.info as Record<string, unknown> });
        break;
      case 'unsubscribed':
        sub?._revoked(m.reason as string);
        break;
      case 'disconnect':
        this.serverClose = { code: m.code as number, reason: m.reason as string };
        if (this.transport === 'sse') this.lost(m.code as number, m.reason as string);
        break;
    }
  }

  /** Drops the transport and everything that depended on it. */
  private closeTransport(): void {
    clearTimeout(this.refreshTimer);
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState < 2) ws.close(1000);
    }
    this.es?.close();
    this.es = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.done(new StellwerkError('disconnected', 'connection lost'), {});
    }
    for (const sub of this.subs.values()) sub._lost();
  }

  /** The connection ended (or could not be made): decide from the close code what comes next. */
  private lost(code: number, reason: string, schedule = true): void {
    if (!this.want || this.state === 'disconnected') return;
    if (this.serverClose) ({ code, reason } = this.serverClose);
    this.closeTransport();
    this.transport = undefined;
    if (code === CODE_DISCONNECTED) return this.stop(code, reason);
    if (code === CODE_UNAUTHORIZED || code === CODE_EXPIRED) {
      if (!this.o.getToken || (code === CODE_UNAUTHORIZED && this.authRetried)) {
        this.emit('error', { code, message: reason || 'token refused' });
        return this.stop(code, reason);
      }
      if (code === CODE_UNAUTHORIZED) this.authRetried = true;
      this.needToken = true;
      this.setState('connecting', { code, reason });
      this.gen++;
      this.reconnectTimer = setTimeout(() => this.open());
      return;
    }
    this.setState('connecting', { code, reason });
    this.gen++;
    if (schedule) this.retry();
    // Offline: wait for `online`, with a late attempt in case that event never comes.
    else this.reconnectTimer = setTimeout(() => this.open(), this.o.maxReconnectDelay ?? 20000);
  }

  private retry(): void {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.open(), this._delay(this.attempts++));
  }

  private stop(code: number, reason: string): void {
    if (!this.want) return;
    this.want = false;
    this.gen++;
    clearTimeout(this.reconnectTimer);
    this.closeTransport();
    this.transport = undefined;
    for (const w of this.waiting.slice()) w(false);
    if (typeof removeEventListener === 'function') for (const [name, fn] of this.pageEvents) removeEventListener(name, fn);
    this.state = 'disconnected';
    this.emit('disconnected', { code, reason });
  }

  /** `pagehide`: close cleanly so that the page can enter the back/forward cache. */
  private suspend(): void {
    if (!this.want) return;
    this.gen++;
    clearTimeout(this.reconnectTimer);
    this.closeTransport();
    this.transport = undefined;
    this.state = 'disconnected';
    this.emit('disconnected', { code: 1000, reason: 'pagehide' });
  }

  /** `pageshow` from the cache, `online`: reconnect now and recover. */
  private resume(): void {
    if (!this.want || this.state === 'connected') return;
    this.attempts = 0;
    this.setState('connecting', { code: 0, reason: 'page back or online' });
    void this.open();
  }
}
