export { Stellwerk } from './client.js';
export { Subscription } from './subscription.js';
export type { SubscriptionState } from './subscription.js';
export { StellwerkError } from './types.js';
export type {
  History,
  HistoryMessage,
  MessageMeta,
  PresenceInfo,
  Published,
  State,
  StellwerkEvents,
  StellwerkOptions,
  SubscriptionOptions,
  TransportName,
} from './types.js';
export { backoff } from './backoff.js';
export { Position } from './position.js';
