// Write Stellwerk channel plugins in JavaScript.
//
// A plugin is an ES module exporting the hooks of the WIT world
// `stellwerk:plugin/channel-plugin@1.0.0` (`plugin-sdk/wit/plugin.wit`), with the same
// names, semantics and defaults as the Rust SDK's `ChannelPlugin` trait:
//
//   export function describe()                  -> Description       (required)
//   export function authorizeSubscribe(req)     -> SubscribeDecision (default: deny everyone)
//   export function onPublish(req)              -> PublishDecision   (default: HTTP yes, clients no)
//   export function filter(req, audience)       -> Delivery          (default: original;
//                                                  called only with `.withFilter()`)
//
// Requests arrive parsed: the channel split into namespace and rest, claims and message data
// as plain JavaScript values. `stellwerk-plugin build` turns the module into a WebAssembly
// component; `stellwerk-plugin-sdk/testing` runs it under `node --test` without a broker.
//
// Layout: Description / ChannelOptions (what describe answers) → Channel, Identity and the
// requests → SubscribeDecision, PublishDecision, Delivery (the answers) → host (log, time,
// config).

export * as host from './host.js';
export { Level } from './host.js';

/** Where a publish comes from. */
export const Source = Object.freeze({
  /** The HTTP API: Stud.IP's server with the API key. */
  Http: 'http',
  /** A connected client's `publish` (only where the namespace allows client publish). */
  Client: 'client',
});

// ---------------------------------------------------------------------------------------
// describe

const NAMESPACE = /^[a-z0-9_-]{1,64}$/;
const PLUGIN_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * Behaviour the broker applies to every channel of a namespace. `new ChannelOptions()`
 * starts with everything off: no presence, no history, no client publish.
 */
export class ChannelOptions {
  constructor() {
    this.presence = false;
    this.historySize = 0;
    this.historyTtlSeconds = 0;
    this.clientPublish = false;
  }

  /** Turns presence on (who is subscribed; join/leave pushes). */
  withPresence() {
    this.presence = true;
    return this;
  }

  /** Keeps the last `size` messages for at most `ttlSeconds`, for history and recovery. */
  history(size, ttlSeconds) {
    if (!Number.isInteger(size) || size < 0 || size > 0xffffffff) {
      throw new RangeError(`history size must be an integer from 0 to 4294967295; got ${size}`);
    }
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 0) {
      throw new RangeError(`history ttl must be whole seconds (0 or more); got ${ttlSeconds}`);
    }
    this.historySize = size;
    this.historyTtlSeconds = ttlSeconds;
    return this;
  }

  /** Lets connected clients publish (each publish still passes `onPublish`). */
  withClientPublish() {
    this.clientPublish = true;
    return this;
  }
}

/** The answer to `describe`: `new Description(name, version).namespace(…)`. */
export class Description {
  /**
   * A plugin called `name` (use the `.wasm` file's name) in `version`, governing no
   * namespace yet.
   */
  constructor(name, version) {
    this.name = String(name);
    this.version = String(version);
    /** @type {{name: string, options: ChannelOptions}[]} */
    this.namespaces = [];
    this.filters = false;
  }

  /** Governs the namespace `name` with these channel options. */
  namespace(name, options = new ChannelOptions()) {
    if (!(options instanceof ChannelOptions)) {
      throw new TypeError('namespace options must be a ChannelOptions (new ChannelOptions()…)');
    }
    this.namespaces.push({ name: String(name), options });
    return this;
  }

  /**
   * Asks the broker to run `filter` for every message. Without it the hook is never called,
   * which spares one plugin call per message.
   */
  withFilter() {
    this.filters = true;
    return this;
  }

  /** The options of one governed namespace, or `undefined`. */
  options(namespace) {
    return this.namespaces.find((ns) => ns.name === namespace)?.options;
  }

  /**
   * Checks what the broker checks on load: a name and version, at least one namespace,
   * valid and distinct namespace names. Returns the reason, or `null` when all is well.
   */
  validate() {
    if (!this.name) return 'the plugin name is empty';
    if (!PLUGIN_NAME.test(this.name)) {
      return `plugin name ${JSON.stringify(this.name)} must be 1 to 64 characters of A-Z a-z 0-9 _ - .`;
    }
    if (!this.version) return 'the plugin version is empty';
    if (this.namespaces.length === 0) return 'the plugin governs no namespace';
    const seen = new Set();
    for (const ns of this.namespaces) {
      if (!NAMESPACE.test(ns.name)) {
        return `namespace ${JSON.stringify(ns.name)} does not match [a-z0-9_-]{1,64}`;
      }
      if (seen.has(ns.name)) return `namespace ${JSON.stringify(ns.name)} is declared twice`;
      seen.add(ns.name);
    }
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// requests

/** A channel name, `namespace:rest` (the namespace ends at the first `:`). */
export class Channel {
  constructor(name) {
    const colon = name.indexOf(':');
    /** The full name, as the client wrote it. */
    this.name = name;
    /** The part before the first `:` (`course` in `course:abc:chat`). */
    this.namespace = colon < 0 ? name : name.slice(0, colon);
    /** Everything after the first `:` (`abc:chat` in `course:abc:chat`); `''` if none. */
    this.rest = colon < 0 ? '' : name.slice(colon + 1);
    /** The `:`-separated parts of `rest` (`['abc', 'chat']`); `[]` if `rest` is empty. */
    this.segments = this.rest === '' ? [] : this.rest.split(':');
    Object.freeze(this.segments);
    Object.freeze(this);
  }

  toString() {
    return this.name;
  }

  /** True if this is the channel `name`. */
  is(name) {
    return this.name === name;
  }
}

/** Who is asking: the verified token's subject and all its claims. */
export class Identity {
  constructor(user, claims) {
    /** The token's `sub`: the Stud.IP user id. */
    this.user = String(user);
    /** Every claim of the token, as an object (`perm`, `courses`, `channels`, …). */
    this.claims = claims && typeof claims === 'object' ? claims : {};
  }

  /** One claim, whatever its type; `undefined` if absent. */
  claim(name) {
    return Object.hasOwn(this.claims, name) ? this.claims[name] : undefined;
  }

  /** A string claim, or `undefined` (`identity.claimStr('perm') === 'dozent'`). */
  claimStr(name) {
    const v = this.claim(name);
    return typeof v === 'string' ? v : undefined;
  }

  /** A boolean claim, or `undefined`. */
  claimBool(name) {
    const v = this.claim(name);
    return typeof v === 'boolean' ? v : undefined;
  }

  /** A number claim, or `undefined`. */
  claimNumber(name) {
    const v = this.claim(name);
    return typeof v === 'number' ? v : undefined;
  }

  /** Does the array claim `name` contain the string `value`? (`channels`, group lists.) */
  claimContains(name, value) {
    const v = this.claim(name);
    return Array.isArray(v) && v.some((item) => item === value);
  }

  /**
   * A string entry of the object claim `name` (`claimEntry('courses', id)` → the course
   * status), or `undefined`.
   */
  claimEntry(name, key) {
    const v = this.claim(name);
    if (!v || typeof v !== 'object' || Array.isArray(v) || !Object.hasOwn(v, key)) return undefined;
    return typeof v[key] === 'string' ? v[key] : undefined;
  }
}

/** May this identity subscribe to this channel? */
export class SubscribeRequest {
  /** @param {Channel} channel @param {Identity | null} identity */
  constructor(channel, identity = null) {
    this.channel = channel;
    /** `null` for anonymous connections (where the broker allows them at all). */
    this.identity = identity;
  }

  /** The subscriber's user id; `null` when anonymous. */
  user() {
    return this.identity ? this.identity.user : null;
  }
}

/** A message on its way into a channel. */
export class PublishRequest {
  constructor(channel, data, source, identity = null) {
    this.channel = channel;
    /** The message data, parsed from JSON. */
    this.data = data;
    /** `Source.Http` or `Source.Client`. */
    this.source = source;
    /** The publishing client's identity; `null` for HTTP publishes. */
    this.identity = identity;
  }

  /** The publishing client's user id; `null` for HTTP publishes. */
  user() {
    return this.identity ? this.identity.user : null;
  }
}

/** A message on its way out to the channel's subscribers (see `filter`). */
export class FilterRequest {
  constructor(channel, data) {
    this.channel = channel;
    this.data = data;
  }
}

// ---------------------------------------------------------------------------------------
// decisions

/** The answer to a subscribe request. */
export class SubscribeDecision {
  constructor(allowed, { reason = null, audience = null, presenceInfo = undefined } = {}) {
    this.allowed = allowed;
    this.reason = reason;
    this.grantAudience = audience;
    this.grantPresenceInfo = presenceInfo;
    Object.freeze(this);
  }

  /** Subscribe, in the default audience. */
  static allow() {
    return new SubscribeDecision(true);
  }

  /** Subscribe, tagged with an audience for `filter`. */
  static allowWithAudience(audience) {
    return new SubscribeDecision(true, { audience: String(audience) });
  }

  /** Refuse with a reason the client may see. */
  static deny(reason) {
    return new SubscribeDecision(false, { reason: String(reason) });
  }

  /**
   * Adds the info other members see in presence (for example `{name: 'Ada'}`). Does
   * nothing to a denial.
   */
  withPresence(info) {
    if (!this.allowed) return this;
    return new SubscribeDecision(true, { audience: this.grantAudience, presenceInfo: info });
  }

  /** True for every kind of allow. */
  isAllowed() {
    return this.allowed;
  }

  /** The audience tag of an allow, or `null`. */
  audience() {
    return this.allowed ? this.grantAudience : null;
  }

  /** The presence info of an allow, or `undefined`. */
  presenceInfo() {
    return this.allowed ? this.grantPresenceInfo : undefined;
  }

  /** The reason of a denial, or `null`. */
  denyReason() {
    return this.allowed ? null : this.reason;
  }
}

/** The answer to a publish. */
export class PublishDecision {
  constructor(kind, value) {
    /** `'allow'`, `'replace'` or `'deny'`. */
    this.kind = kind;
    this.value = value;
    Object.freeze(this);
  }

  /** Publish the data as it is. */
  static allow() {
    return new PublishDecision('allow', undefined);
  }

  /** Publish `data` instead of what was sent (any JSON value). */
  static replace(data) {
    return new PublishDecision('replace', data);
  }

  /** Refuse with a reason the publisher may see. */
  static deny(reason) {
    return new PublishDecision('deny', String(reason));
  }

  /** True for allow and replace. */
  isAllowed() {
    return this.kind !== 'deny';
  }

  /** The replacement data of a replace, or `undefined`. */
  replacement() {
    return this.kind === 'replace' ? this.value : undefined;
  }

  /** The reason of a denial, or `null`. */
  denyReason() {
    return this.kind === 'deny' ? this.value : null;
  }
}

/** What one audience receives of a message. */
export class Delivery {
  constructor(kind, data) {
    /** `'skip'`, `'original'` or `'replace'`. */
    this.kind = kind;
    this.data = data;
    Object.freeze(this);
  }

  /** Nothing: this audience does not see the message. */
  static skip() {
    return SKIP;
  }

  /** The message as published. */
  static original() {
    return ORIGINAL;
  }

  /** This data instead of the published one. */
  static replace(data) {
    return new Delivery('replace', data);
  }
}

const SKIP = new Delivery('skip', undefined);
const ORIGINAL = new Delivery('original', undefined);

// ---------------------------------------------------------------------------------------
// defaults: the same as the Rust trait's

/** The hooks a plugin module may leave out, with the Rust SDK's defaults. */
export const defaults = Object.freeze({
  /** Deny everyone (fail closed), so a plugin that forgets this hook exposes nothing. */
  authorizeSubscribe(_req) {
    return SubscribeDecision.deny('this channel does not accept subscriptions');
  },
  /** Allow the HTTP API (the Stud.IP server), deny clients. */
  onPublish(req) {
    return req.source === Source.Http
      ? PublishDecision.allow()
      : PublishDecision.deny('clients may not publish on this channel');
  },
  /** The original message. */
  filter(_req, _audience) {
    return Delivery.original();
  },
});
