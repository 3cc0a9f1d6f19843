// Types of `stellwerk-plugin-sdk`: what a plugin module exports and what its hooks get.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export declare const Source: { readonly Http: 'http'; readonly Client: 'client' };
export type Source = 'http' | 'client';

export declare const Level: {
  readonly Trace: 'trace';
  readonly Debug: 'debug';
  readonly Info: 'info';
  readonly Warn: 'warn';
  readonly Error: 'error';
};
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';

export declare class ChannelOptions {
  presence: boolean;
  historySize: number;
  historyTtlSeconds: number;
  clientPublish: boolean;
  withPresence(): this;
  history(size: number, ttlSeconds: number): this;
  withClientPublish(): this;
}

export declare class Description {
  constructor(name: string, version: string);
  readonly name: string;
  readonly version: string;
  readonly namespaces: { name: string; options: ChannelOptions }[];
  readonly filters: boolean;
  namespace(name: string, options?: ChannelOptions): this;
  withFilter(): this;
  options(namespace: string): ChannelOptions | undefined;
  validate(): string | null;
}

export declare class Channel {
  constructor(name: string);
  readonly name: string;
  readonly namespace: string;
  readonly rest: string;
  readonly segments: readonly string[];
  is(name: string): boolean;
}

export declare class Identity {
  constructor(user: string, claims: Record<string, Json>);
  readonly user: string;
  readonly claims: Record<string, Json>;
  claim(name: string): Json | undefined;
  claimStr(name: string): string | undefined;
  claimBool(name: string): boolean | undefined;
  claimNumber(name: string): number | undefined;
  claimContains(name: string, value: string): boolean;
  claimEntry(name: string, key: string): string | undefined;
}

export declare class SubscribeRequest {
  readonly channel: Channel;
  readonly identity: Identity | null;
  user(): string | null;
}

export declare class PublishRequest {
  readonly channel: Channel;
  readonly data: Json;
  readonly source: Source;
  readonly identity: Identity | null;
  user(): string | null;
}

export declare class FilterRequest {
  readonly channel: Channel;
  readonly data: Json;
}

export declare class SubscribeDecision {
  static allow(): SubscribeDecision;
  static allowWithAudience(audience: string): SubscribeDecision;
  static deny(reason: string): SubscribeDecision;
  withPresence(info: Json): SubscribeDecision;
  isAllowed(): boolean;
  audience(): string | null;
  presenceInfo(): Json | undefined;
  denyReason(): string | null;
}

export declare class PublishDecision {
  static allow(): PublishDecision;
  static replace(data: Json): PublishDecision;
  static deny(reason: string): PublishDecision;
  readonly kind: 'allow' | 'replace' | 'deny';
  isAllowed(): boolean;
  replacement(): Json | undefined;
  denyReason(): string | null;
}

export declare class Delivery {
  static skip(): Delivery;
  static original(): Delivery;
  static replace(data: Json): Delivery;
  readonly kind: 'skip' | 'original' | 'replace';
  readonly data: Json | undefined;
}

/** What a plugin module exports. Only `describe` is required. */
export interface ChannelPlugin {
  describe(): Description;
  authorizeSubscribe?(req: SubscribeRequest): SubscribeDecision;
  onPublish?(req: PublishRequest): PublishDecision;
  filter?(req: FilterRequest, audience: string): Delivery;
}

export declare const defaults: Required<Omit<ChannelPlugin, 'describe'>>;

export declare namespace host {
  function log(level: Level, message: string): void;
  function debug(message: string): void;
  function info(message: string): void;
  function warn(message: string): void;
  function error(message: string): void;
  function nowMs(): number;
  function configJson(): string;
  function config(): Record<string, Json>;
}
