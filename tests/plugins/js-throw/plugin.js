// Test plugin `js-throw` (never deploy): `onPublish` throws. The broker must refuse the
// publish, count a fault and log the exception; subscribing works normally.
import { ChannelOptions, Description, SubscribeDecision } from 'stellwerk-plugin-sdk';

export function describe() {
  return new Description('js-throw', '0.1.0').namespace('js-throw', new ChannelOptions().withClientPublish());
}

export function authorizeSubscribe() {
  return SubscribeDecision.allow();
}

export function onPublish() {
  throw new Error('onPublish throws on purpose');
}
