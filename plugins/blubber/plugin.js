// Channel plugin for the `blubber` namespace: Stud.IP's messenger threads ("Blubber").
//
// Channels: `blubber:<thread id>`, the thread id being 32 hex characters like every Stud.IP id.
//
// Who may read a thread is a question only Stud.IP can answer (course membership, private
// threads, contacts). So Stud.IP answers it when it renders the page, and mints a per-page
// token whose `channels` claim lists exactly the channels that page may subscribe to
// (DESIGN §5). The rules:
// - A token may subscribe to a `blubber:` channel only if that exact name is in its `channels`
//   claim (an array of channel names). Anonymous connections are refused.
// - Clients may publish on those same channels. The plugin writes the sender's user id (`sub`)
//   into `author`, whatever the client sent there, and cuts `text` to 5,000 characters.
// - Stud.IP's server (the HTTP API) publishes on any thread, unchanged.
//
// Presence is on (who is reading the thread right now), history keeps 100 messages for a day.
import {
  ChannelOptions,
  Description,
  PublishDecision,
  Source,
  SubscribeDecision,
} from 'stellwerk-plugin-sdk';

/** Longest `text` kept, in characters (code points: an umlaut or an emoji counts once). */
export const MAX_TEXT_CHARS = 5000;
const THREAD_ID = /^[0-9a-f]{32}$/;
const DAY_SECONDS = 24 * 60 * 60;

export function describe() {
  return new Description('blubber', '0.1.0').namespace(
    'blubber',
    new ChannelOptions().withPresence().history(100, DAY_SECONDS).withClientPublish(),
  );
}

export function authorizeSubscribe(req) {
  if (!req.identity) return SubscribeDecision.deny('login required');
  const problem = threadProblem(req.channel);
  if (problem) return SubscribeDecision.deny(problem);
  if (!req.identity.claimContains('channels', req.channel.name)) {
    return SubscribeDecision.deny(`${req.channel.name} is not in this token's channels`);
  }
  return SubscribeDecision.allow();
}

export function onPublish(req) {
  const problem = threadProblem(req.channel);
  if (problem) return PublishDecision.deny(problem);
  if (req.source === Source.Http) return PublishDecision.allow();

  if (!req.identity || !req.identity.claimContains('channels', req.channel.name)) {
    return PublishDecision.deny(`${req.channel.name} is not in this token's channels`);
  }
  const data = req.data;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    return PublishDecision.deny('a blubber message is an object with a "text"');
  }
  if (typeof data.text !== 'string') return PublishDecision.deny('"text" must be a string');
  return PublishDecision.replace({ ...data, author: req.identity.user, text: trim(data.text) });
}

/** Why `channel` is no Blubber thread, or `null`. */
function threadProblem(channel) {
  if (channel.segments.length !== 1 || !THREAD_ID.test(channel.segments[0])) {
    return `blubber channels are blubber:<thread id> (32 hex characters); got ${channel.name}`;
  }
  return null;
}

/** The first `MAX_TEXT_CHARS` characters of `text` (never half a surrogate pair). */
function trim(text) {
  if (text.length <= MAX_TEXT_CHARS) return text;
  return Array.from(text).slice(0, MAX_TEXT_CHARS).join('');
}
