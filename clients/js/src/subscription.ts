import { Position } from './position.js';
import type { History, PresenceInfo, Published, SubscriptionOptions } from './types.js';
import { StellwerkError } from './types.js';
import type { Stellwerk } from './client.js';
import { safely } from './safely.js';

export type SubscriptionState = 'subscribing' | 'subscribed' | 'unsubscribed';

/** Errors after which subscribing again makes no sense. */
const FINAL = ['forbidden', 'not_found', 'bad_request'];

/**
 * One channel of a {@link Stellwerk} client. Made by `sw.subscribe(...)`, at once; it goes live
 * whenever the client is connected and follows it through reconnects.
 */
export class Subscription {
  readonly channel: string;
  state: SubscriptionState = 'subscribing';
  /** Why the subscription ended (server revocation or refusal). */
  reason = '';
  /** @internal */
  readonly position = new Position();
  /** @internal */
  readonly opts: SubscriptionOptions;
  private readonly client: Stellwerk;
  private retries = 0;
  /** A `subscribe` is on its way (its reply, or the connection's end, clears it). */
  private asking = false;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** @internal a resubscribe that follows a gap (onUnrecovered when it is not recovered) */
  resumed = false;

  /** @internal use `sw.subscribe()` */
  constructor(client: Stellwerk, channel: string, opts: SubscriptionOptions) {
    this.client = client;
    this.channel = channel;
    this.opts = opts;
  }

  /** Ends the subscription; the client forgets it (subscribe again for a new one). */
  unsubscribe(): void {
    if (this.state === 'unsubscribed') return;
    this.end('unsubscribed by the client');
    this.client._unsubscribe(this);
  }

  /** The channel's current members (channels with presence; not over SSE). */
  presence(): Promise<PresenceInfo[]> {
    return this.client._call('presence', { channel: this.channel }).then((r) => r.members as PresenceInfo[]);
  }

  /** The latest `limit` kept messages, oldest first (not over SSE). */
  history(opts: { limit?: number; since?: number } = {}): Promise<History> {
    return this.client
      ._call('history', { channel: this.channel, ...opts })
      .then((r) => ({ epoch: r.epoch as string, messages: r.messages as History['messages'] }));
  }

  /** Publishes on the channel where its plugin allows client publish (course chat; not over SSE). */
  publish(data: unknown): Promise<Published> {
    return this.client
      ._call('publish', { channel: this.channel, data })
      .then((r) => ({ epoch: r.epoch as string, offset: r.offset as number }));
  }

  /** @internal sends `subscribe` (with `recover` where there is a position) on a live WebSocket. */
  _subscribe(): void {
    clearTimeout(this.retryTimer);
    if (this.state === 'unsubscribed' || this.asking) return;
    this.state = 'subscribing';
    this.asking = true;
    const recover = this.opts.recover === false ? undefined : this.position.recover();
    // The reply is taken synchronously: the replayed messages follow it in the same batch.
    this.client._command('subscribe', recover ? { channel: this.channel, recover } : { channel: this.channel }, (e, r) => {
      this.asking = false;
      if (!e) return this._subscribed(r.epoch as string, r.offset as number, r.recovered as boolean | undefined);
      if (this.state === 'unsubscribed' || e.code === 'disconnected') return;
      if (FINAL.includes(e.code)) {
        this.end(e.message);
        this.client._forget(this);
        safely(this.opts.onError, e);
      } else {
        // rate_limited, unavailable, internal, timeout: try again later on this connection.
        this.retryTimer = setTimeout(() => this.client._connected() && this._subscribe(), this.client._delay(this.retries++));
      }
    });
  }

  /** @internal the subscription is live (WebSocket reply or SSE `subscribed` event). */
  _subscribed(epoch: string, offset: number, recovered?: boolean): void {
    if (this.state === 'unsubscribed') return;
    this.state = 'subscribed';
    this.retries = 0;
    const continuous = this.position.subscribed(epoch, offset, recovered);
    const resumed = this.resumed;
    this.resumed = false;
    safely(this.opts.onSubscribed, { recovered: recovered === true || (resumed && continuous) });
    if (!continuous) safely(this.opts.onUnrecovered);
  }

  /** @internal a `message` push */
  _message(epoch: string, offset: number, data: unknown): void {
    if (this.state === 'unsubscribed' || !this.position.accept(epoch, offset)) return;
    safely(this.opts.onMessage, data, { channel: this.channel, epoch, offset });
  }

  /** @internal an `unsubscribed` push */
  _revoked(reason: string): void {
    if (/\brecover\b/.test(reason)) {
      // The broker's stream was interrupted (Redis engine): subscribe again with recover.
      this.resumed = true;
      if (this.client._transport() === 'websocket') this._subscribe();
      else this.client._resync();
      return;
    }
    this.end(reason);
    this.client._forget(this);
    safely(this.opts.onUnsubscribed, reason);
  }

  /** @internal */
  _lost(): void {
    clearTimeout(this.retryTimer);
    if (this.state !== 'unsubscribed') {
      this.state = 'subscribing';
      this.resumed = this.position.epoch !== undefined;
    }
  }

  private end(reason: string): void {
    clearTimeout(this.retryTimer);
    this.state = 'unsubscribed';
    this.reason = reason;
  }
}
