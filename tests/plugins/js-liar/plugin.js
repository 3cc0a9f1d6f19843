// Test plugin `js-liar` (never deploy): `filter` answers something that is not a delivery
// for messages with a `lie`. The broker must skip that delivery and count a fault; honest
// messages are delivered.
import { ChannelOptions, Delivery, Description, SubscribeDecision } from 'stellwerk-plugin-sdk';

export function describe() {
  return new Description('js-liar', '0.1.0')
    .namespace('js-liar', new ChannelOptions())
    .withFilter();
}

export function authorizeSubscribe() {
  return SubscribeDecision.allow();
}

export function filter(req) {
  if (req.data && req.data.lie !== undefined) return { tag: 'replace', val: 'not json' };
  return Delivery.original();
}
