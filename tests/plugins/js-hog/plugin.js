// Test plugin `js-hog` (never deploy): `authorizeSubscribe` allocates without bound. The
// broker's memory cap must stop it; publishing works normally.
import { ChannelOptions, Description, SubscribeDecision } from 'stellwerk-plugin-sdk';

export function describe() {
  return new Description('js-hog', '0.1.0').namespace('js-hog', new ChannelOptions());
}

export function authorizeSubscribe(req) {
  const kept = [];
  while (req.channel.namespace === 'js-hog') kept.push(new Array(1 << 16).fill(kept.length));
  return SubscribeDecision.deny(`unreachable with ${kept.length} arrays`);
}
