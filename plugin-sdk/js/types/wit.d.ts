// The WIT world `stellwerk:plugin/channel-plugin@1.0.0` (`plugin-sdk/wit/plugin.wit`) as
// componentize-qjs's bindings see it: records are objects with camelCase fields, variants are
// `{ tag, val }`, enums are strings, `option<T>` is `T | null`, u64 is a `number`.
// Checked against plugin.wit by test/types.test.js: every record, field, variant case and
// enum case of the WIT appears here.

export interface ChannelOptions {
  presence: boolean;
  historySize: number;
  historyTtlSeconds: number;
  clientPublish: boolean;
}
export interface Namespace {
  name: string;
  options: ChannelOptions;
}
export interface Description {
  name: string;
  version: string;
  namespaces: Namespace[];
  filters: boolean;
}
export interface Identity {
  user: string;
  claimsJson: string;
}
export interface SubscribeRequest {
  channel: string;
  identity: Identity | null;
}
export interface SubscriptionGrant {
  presenceInfoJson: string | null;
  audience: string | null;
}
export type SubscribeDecision =
  | { tag: 'allow'; val: SubscriptionGrant }
  | { tag: 'deny'; val: string };
export type PublishSource = 'http' | 'client';
export interface PublishRequest {
  channel: string;
  dataJson: string;
  source: PublishSource;
  identity: Identity | null;
}
export type PublishDecision =
  | { tag: 'allow' }
  | { tag: 'replace'; val: string }
  | { tag: 'deny'; val: string };
export interface FilterRequest {
  channel: string;
  dataJson: string;
  audiences: string[];
}
export type Delivery = { tag: 'skip' } | { tag: 'original' } | { tag: 'replace'; val: string };

/** `import host from 'stellwerk:plugin/host@1.0.0'` (the default export) */
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
export interface Host {
  log(level: Level, message: string): void;
  nowMs(): number;
  configJson(): string;
}

/** The world's exports. */
export interface ChannelPluginExports {
  describe(): Description;
  authorizeSubscribe(request: SubscribeRequest): SubscribeDecision;
  onPublish(request: PublishRequest): PublishDecision;
  filter(request: FilterRequest): Delivery[];
}
