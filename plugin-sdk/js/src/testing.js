// Unit-test plugin rules with `node --test`: no broker, no WebAssembly needed.
//
//   import { test } from 'node:test';
//   import assert from 'node:assert/strict';
//   import * as plugin from '../plugin.js';
//   import * as testing from 'stellwerk-plugin-sdk/testing';
//   import { SubscribeRequest } from 'stellwerk-plugin-sdk/testing';
//
//   test('root may subscribe', () => {
//     testing.describe(plugin); // throws if the broker would refuse the description
//     const root = SubscribeRequest.forChannel('staff:news').byUser('u1', { perm: 'root' });
//     assert.ok(testing.authorizeSubscribe(plugin, root).isAllowed());
//   });
//
// The request builders are those of the Rust SDK's `testing` module (`forChannel`, `byUser`,
// `withData`). The hook runners (`authorizeSubscribe`, `onPublish`, `filter`) go through the
// same adapter as the component: requests are sent as the broker sends them (JSON text),
// missing hooks get the SDK's defaults, and an answer the broker would refuse throws here too.
//
// The host functions work natively: logs go to stderr and are kept for `takeLogs()`, time is
// the system clock unless `setNowMs` fixes it, and the configuration is `{}` unless
// `setConfig` sets one.

import * as sdk from './index.js';
import * as abi from './abi.js';
import { __host } from './host.js';

export { Source } from './index.js';

function channelName(channel) {
  if (typeof channel !== 'string') throw new TypeError('the channel is a string like "course:abc"');
  return channel;
}

/** A subscribe request as the broker builds it; `forChannel(…)` is anonymous. */
export class SubscribeRequest extends sdk.SubscribeRequest {
  /** An anonymous subscribe request for `channel`; add a user with `byUser`. */
  static forChannel(channel) {
    return new SubscribeRequest(new sdk.Channel(channelName(channel)), null);
  }

  /** The same request from the user `user` with these token claims. */
  byUser(user, claims = {}) {
    return new SubscribeRequest(this.channel, new sdk.Identity(user, claims));
  }
}

/** A publish as the broker builds it; `forChannel(…)` is an HTTP API publish of `null`. */
export class PublishRequest extends sdk.PublishRequest {
  /** An HTTP API publish of `null` to `channel`; see `withData` and `byUser`. */
  static forChannel(channel) {
    return new PublishRequest(new sdk.Channel(channelName(channel)), null, sdk.Source.Http, null);
  }

  /** The same publish carrying `data`. */
  withData(data) {
    return new PublishRequest(this.channel, data, this.source, this.identity);
  }

  /**
   * The same publish sent by a connected client of the user `user` (so `Source.Client`);
   * HTTP publishes never carry an identity.
   */
  byUser(user, claims = {}) {
    return new PublishRequest(this.channel, this.data, sdk.Source.Client, new sdk.Identity(user, claims));
  }
}

/** A message on its way out; `forChannel(…)` carries `null`. */
export class FilterRequest extends sdk.FilterRequest {
  /** A message of `null` on `channel`; see `withData`. */
  static forChannel(channel) {
    return new FilterRequest(new sdk.Channel(channelName(channel)), null);
  }

  /** The same message carrying `data`. */
  withData(data) {
    return new FilterRequest(this.channel, data);
  }
}

function witIdentity(identity) {
  return identity ? { user: identity.user, claimsJson: JSON.stringify(identity.claims) } : null;
}

/**
 * The plugin's description, checked as the broker checks it on load. Throws with the
 * reason if the broker would refuse it.
 */
export function describe(plugin) {
  const wit = abi.exportsFor(plugin).describe();
  const description = abi.descriptionFromWit(wit, sdk.ChannelOptions);
  const reason = description.validate();
  if (reason) throw new Error(`the broker would refuse this description: ${reason}`);
  return description;
}

/** Runs `authorizeSubscribe` as the broker does (the default if the plugin has none). */
export function authorizeSubscribe(plugin, request) {
  const answer = abi.exportsFor(plugin).authorizeSubscribe({
    channel: request.channel.name,
    identity: witIdentity(request.identity),
  });
  return abi.subscribeDecisionFromWit(answer);
}

/** Runs `onPublish` as the broker does (the default if the plugin has none). */
export function onPublish(plugin, request) {
  const dataJson = JSON.stringify(request.data);
  if (dataJson === undefined) throw new TypeError('publish data must be JSON (use withData)');
  const answer = abi.exportsFor(plugin).onPublish({
    channel: request.channel.name,
    dataJson,
    source: request.source,
    identity: witIdentity(request.identity),
  });
  return abi.publishDecisionFromWit(answer);
}

/**
 * Runs `filter` as the broker does: once per audience, in order. Throws if the description
 * lacks `.withFilter()`: the broker would never call the hook, so testing it would prove
 * nothing.
 */
export function filter(plugin, request, audiences) {
  if (!describe(plugin).filters) {
    throw new Error('the broker never calls filter on this plugin: add `.withFilter()` to its description');
  }
  const answer = abi.exportsFor(plugin).filter({
    channel: request.channel.name,
    dataJson: JSON.stringify(request.data),
    audiences: [...audiences],
  });
  return answer.map(abi.deliveryFromWit);
}

/** Sets what `host.config()` returns. */
export function setConfig(config) {
  __host().state.configJson = JSON.stringify(config);
}

/** Fixes `host.nowMs()` (`null`: the system clock). */
export function setNowMs(nowMs) {
  __host().state.nowMs = nowMs;
}

/** The lines logged since the last call, oldest first, as `[level, message]`. */
export function takeLogs() {
  const state = __host().state;
  const logs = state.logs;
  state.logs = [];
  return logs;
}
