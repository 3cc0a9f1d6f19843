import type * as sdk from './index.js';

export { Source } from './index.js';

export declare class SubscribeRequest extends sdk.SubscribeRequest {
  static forChannel(channel: string): SubscribeRequest;
  byUser(user: string, claims?: Record<string, sdk.Json>): SubscribeRequest;
}
export declare class PublishRequest extends sdk.PublishRequest {
  static forChannel(channel: string): PublishRequest;
  withData(data: sdk.Json): PublishRequest;
  byUser(user: string, claims?: Record<string, sdk.Json>): PublishRequest;
}
export declare class FilterRequest extends sdk.FilterRequest {
  static forChannel(channel: string): FilterRequest;
  withData(data: sdk.Json): FilterRequest;
}

export declare function describe(plugin: sdk.ChannelPlugin): sdk.Description;
export declare function authorizeSubscribe(plugin: sdk.ChannelPlugin, request: sdk.SubscribeRequest): sdk.SubscribeDecision;
export declare function onPublish(plugin: sdk.ChannelPlugin, request: sdk.PublishRequest): sdk.PublishDecision;
export declare function filter(plugin: sdk.ChannelPlugin, request: sdk.FilterRequest, audiences: readonly string[]): sdk.Delivery[];
export declare function setConfig(config: Record<string, sdk.Json>): void;
export declare function setNowMs(nowMs: number | null): void;
export declare function takeLogs(): [sdk.Level, string][];
