// Test plugin `js-spin` (never deploy): `authorizeSubscribe` never returns. The broker's
// CPU deadline must stop it; publishing works normally.
import { ChannelOptions, Description, SubscribeDecision } from 'stellwerk-plugin-sdk';

export function describe() {
  return new Description('js-spin', '0.1.0').namespace('js-spin', new ChannelOptions());
}

export function authorizeSubscribe(req) {
  let turns = 0;
  while (req.channel.namespace === 'js-spin') turns++;
  return SubscribeDecision.deny(`unreachable after ${turns} turns`);
}
