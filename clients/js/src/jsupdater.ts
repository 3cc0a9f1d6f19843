/**
 * The STUDIP.JSUpdater bridge: existing Stud.IP code that registers with
 * `STUDIP.JSUpdater.register(index, receiveCallback, sendCallbackOrData)` receives pushes
 * `{"index": "<index>", "data": …}` from Stellwerk, handed to the callback as
 * `processUpdate` hands it polled data, without being rewritten.
 *
 * The bridge wraps the page's JSUpdater: `register`/`unregister` are remembered and passed
 * on, `start`/`stop` say whether the page wants updates. While the broker connection is up,
 * polling of `dispatch.php/jsupdater/get` is paused (`poll: 'fallback'`, the default) or goes
 * on as before (`poll: 'always'`, for pages with handlers that PHP does not push to yet);
 * while the broker is unreachable, polling goes on as before.
 */
import { Stellwerk } from './client.js';
import { safely } from './safely.js';
import type { Subscription } from './subscription.js';
import type { StellwerkOptions } from './types.js';

type Callback = (data: unknown) => void;

/** The part of Stud.IP's `STUDIP.JSUpdater` the bridge uses. */
export interface JSUpdater {
  start(): void;
  stop(): void;
  register(index: string, callback: Callback, data?: unknown, interval?: number): void;
  unregister(index: string): void;
  /** Stud.IP 4.x exposes it; used for indexes registered before the bridge was installed. */
  processUpdate?(json: Record<string, unknown>): void;
}

/** Options of the bridge; those of {@link StellwerkOptions} (`token`, `getToken`, …) go to the client it makes. */
export interface BridgeOptions extends StellwerkOptions {
  /** The broker's WebSocket URL, e.g. `wss://stellwerk.example.org/ws`. */
  url?: string;
  /** Use this client instead of making one (it is connected by the bridge if not yet). */
  client?: Stellwerk;
  /** The Stud.IP user id: the bridge subscribes `user:<id>`. */
  user?: string;
  /** Course ids of the page: the bridge subscribes `course:<id>:<topic>` for each. */
  courses?: string[];
  /** Topic of the course channels (default `jsupdater`). */
  topic?: string;
  /** Further channels carrying `{index, data}` pushes. */
  channels?: string[];
  /** `fallback` (default): poll only while the broker is unreachable; `always`: keep polling. */
  poll?: 'fallback' | 'always';
  /** Whether the page's JSUpdater counts as started (Stud.IP starts it on every page; default true). */
  active?: boolean;
  /** The `STUDIP` object (default: the global one). */
  studip?: { JSUpdater: JSUpdater };
}

export interface Bridge {
  client: Stellwerk;
  subscriptions: Subscription[];
  /** Puts the original JSUpdater back and unsubscribes. */
  uninstall(): void;
}

/** Installs the bridge on `STUDIP.JSUpdater`; call it once the JSUpdater exists. */
export function installJSUpdaterBridge(options: BridgeOptions): Bridge {
  const studip = options.studip ?? (globalThis as unknown as { STUDIP: { JSUpdater: JSUpdater } }).STUDIP;
  const original = studip.JSUpdater;
  const handlers: Record<string, Callback> = {};
  let wanted = options.active ?? true;
  let polling = wanted;
  const client = options.client ?? new Stellwerk(options.url!, options);

  const sync = () => {
    const should = wanted && (options.poll === 'always' || client.state !== 'connected');
    if (should === polling) return;
    polling = should;
    if (should) original.start();
    else original.stop();
  };

  const deliver = (index: string, data: unknown) => {
    if (handlers[index]) safely(handlers[index], data);
    else if (original.processUpdate) safely(original.processUpdate.bind(original), { [index]: data });
  };

  // Everything else (Stud.IP's own helpers and state) is read through from the original.
  studip.JSUpdater = Object.assign(Object.create(original) as JSUpdater, {
    start() {
      wanted = true;
      sync();
    },
    stop() {
      wanted = false;
      sync();
    },
    register(index: string, callback: Callback, data: unknown = null, interval = 0) {
      handlers[index] = callback;
      original.register(index, callback, data, interval);
    },
    unregister(index: string) {
      delete handlers[index];
      original.unregister(index);
    },
  });

  const channels = [
    ...(options.user ? [`user:${options.user}`] : []),
    ...(options.courses ?? []).map((id) => `course:${id}:${options.topic ?? 'jsupdater'}`),
    ...(options.channels ?? []),
  ];
  const onMessage = (push: unknown) => {
    const p = push as { index?: unknown; data?: unknown } | null;
    if (p && typeof p.index === 'string' && 'data' in p) deliver(p.index, p.data);
  };
  const subscriptions = channels.map((c) => client.getSubscription(c) ?? client.subscribe(c, { onMessage, recover: true }));
  const offs = (['connected', 'connecting', 'disconnected'] as const).map((e) => client.on(e, sync));
  client.connect();
  sync();

  return {
    client,
    subscriptions,
    uninstall() {
      for (const off of offs) off();
      for (const s of subscriptions) s.unsubscribe();
      if (!options.client) client.disconnect();
      studip.JSUpdater = original;
      if (wanted && !polling) original.start();
    },
  };
}
