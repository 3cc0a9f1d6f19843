// The component ABI: turns a plugin module (hooks taking parsed requests, answering with
// decision objects) into the four exports of the WIT world, in the shapes componentize-qjs's
// bindings use (records as objects with camelCase fields, variants as `{tag, val}`, enums as
// strings, `option<T>` as the value or `null`, u64 as a number). Plugin authors never see this module; the
// test harness drives plugins through it, so `node --test` checks what the broker would get.
//
// What the host sends that cannot be read (claims or data that are not JSON) is refused: deny,
// or skip, and a log line — as in the Rust SDK. What the plugin answers that cannot be sent
// (not a decision object, data that is not JSON) throws, which traps the component: the broker
// refuses the request, counts a fault and logs the message. A hook that throws is logged with
// its stack, then traps the same way (the Rust SDK's panic).

import {
  Channel,
  Delivery,
  Description,
  FilterRequest,
  Identity,
  PublishDecision,
  PublishRequest,
  Source,
  SubscribeDecision,
  SubscribeRequest,
  defaults,
} from './index.js';
import * as host from './host.js';

const HOOKS = ['describe', 'authorizeSubscribe', 'onPublish', 'filter'];

/**
 * Why `plugin` (a module namespace or object) cannot be a plugin, or `null`. The build
 * refuses such a module before it makes a component of it.
 */
export function problem(plugin) {
  if (!plugin || typeof plugin.describe !== 'function') {
    return 'the plugin module exports no `describe` function: add `export function describe() { return new Description(…) … }`';
  }
  for (const hook of HOOKS) {
    if (plugin[hook] !== undefined && typeof plugin[hook] !== 'function') {
      return `the plugin module exports \`${hook}\`, but it is not a function`;
    }
  }
  const similar = Object.keys(plugin).filter(
    (name) => !HOOKS.includes(name) && HOOKS.some((hook) => hook.toLowerCase() === name.toLowerCase()),
  );
  if (similar.length > 0) {
    return `the plugin module exports ${similar.map((s) => `\`${s}\``).join(', ')}: hooks are spelt ${HOOKS.map((h) => `\`${h}\``).join(', ')}`;
  }
  return null;
}

/** The WIT exports for `plugin`. */
export function exportsFor(plugin) {
  const reason = problem(plugin);
  if (reason) throw new TypeError(reason);
  const authorizeSubscribe = plugin.authorizeSubscribe ?? defaults.authorizeSubscribe;
  const onPublish = plugin.onPublish ?? defaults.onPublish;
  const filter = plugin.filter ?? defaults.filter;

  return {
    describe() {
      const d = guarded('describe', () => plugin.describe());
      return describeToWit(d);
    },

    authorizeSubscribe(request) {
      let req;
      try {
        req = new SubscribeRequest(new Channel(request.channel), identity(request.identity));
      } catch (e) {
        return { tag: 'deny', val: refuse(e.message) };
      }
      const decision = guarded('authorizeSubscribe', () => authorizeSubscribe(req));
      return subscribeDecisionToWit(decision);
    },

    onPublish(request) {
      let req;
      try {
        req = new PublishRequest(
          new Channel(request.channel),
          parseJson('data', request.dataJson),
          request.source === 'client' ? Source.Client : Source.Http,
          identity(request.identity),
        );
      } catch (e) {
        return { tag: 'deny', val: refuse(e.message) };
      }
      const decision = guarded('onPublish', () => onPublish(req));
      return publishDecisionToWit(decision);
    },

    filter(request) {
      let data;
      try {
        data = parseJson('data', request.dataJson);
      } catch (e) {
        refuse(e.message);
        return request.audiences.map(() => ({ tag: 'skip' }));
      }
      const req = new FilterRequest(new Channel(request.channel), data);
      return request.audiences.map((audience) =>
        deliveryToWit(guarded('filter', () => filter(req, audience))),
      );
    },
  };
}

/** Runs a hook; an exception is logged with its stack (the broker then counts a fault). */
function guarded(hook, run) {
  try {
    return run();
  } catch (e) {
    // V8's stack starts with "Name: message", QuickJS's with the first frame.
    let detail = String(e);
    if (e instanceof Error) {
      const head = `${e.name}: ${e.message}`;
      const stack = e.stack ?? '';
      detail = stack.startsWith(head) ? stack : `${head}\n${stack}`;
    }
    // One log line: the broker's log keeps fields (the plugin's name) at the end of the line.
    host.error(`plugin threw in ${hook}: ${detail.trim().replace(/\s*\n\s*/g, ' | ')}`);
    throw e;
  }
}

/** An answer the broker could not use: logged, then thrown (a fault, request refused). */
function malformed(hook, message) {
  const text = `${hook} answered ${message}`;
  host.error(text);
  return new TypeError(text);
}

function identity(wit) {
  if (wit === undefined || wit === null) return null;
  const claims = parseJson('claims', wit.claimsJson);
  return new Identity(wit.user, claims);
}

function parseJson(what, text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`the broker sent ${what} that are not JSON: ${e.message}`);
  }
}

function refuse(reason) {
  host.error(reason);
  return reason;
}

/** JSON text of an answer's data; throws if it has none. */
function json(hook, what, value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw malformed(hook, `${what} that cannot be JSON: ${e.message}`);
  }
  if (text === undefined) throw malformed(hook, `${what} that is not JSON (${typeof value})`);
  return text;
}

function describeToWit(d) {
  if (!(d instanceof Description)) {
    throw malformed('describe', `${shape(d)}, not a Description (return new Description(name, version)…)`);
  }
  return {
    name: d.name,
    version: d.version,
    filters: d.filters,
    namespaces: d.namespaces.map((ns) => ({
      name: ns.name,
      options: {
        presence: ns.options.presence,
        historySize: ns.options.historySize,
        historyTtlSeconds: ns.options.historyTtlSeconds,
        clientPublish: ns.options.clientPublish,
      },
    })),
  };
}

function subscribeDecisionToWit(d) {
  if (!(d instanceof SubscribeDecision)) {
    throw malformed(
      'authorizeSubscribe',
      `${shape(d)}, not a SubscribeDecision (return SubscribeDecision.allow() or SubscribeDecision.deny(reason))`,
    );
  }
  if (!d.isAllowed()) return { tag: 'deny', val: d.denyReason() };
  const info = d.presenceInfo();
  return {
    tag: 'allow',
    val: {
      presenceInfoJson: info === undefined ? null : json('authorizeSubscribe', 'presence info', info),
      audience: d.audience() ?? null,
    },
  };
}

function publishDecisionToWit(d) {
  if (!(d instanceof PublishDecision)) {
    throw malformed(
      'onPublish',
      `${shape(d)}, not a PublishDecision (return PublishDecision.allow(), .replace(data) or .deny(reason))`,
    );
  }
  switch (d.kind) {
    case 'allow':
      return { tag: 'allow' };
    case 'replace':
      return { tag: 'replace', val: json('onPublish', 'replacement data', d.replacement()) };
    default:
      return { tag: 'deny', val: d.denyReason() };
  }
}

function deliveryToWit(d) {
  if (!(d instanceof Delivery)) {
    throw malformed(
      'filter',
      `${shape(d)}, not a Delivery (return Delivery.original(), .skip() or .replace(data))`,
    );
  }
  switch (d.kind) {
    case 'skip':
      return { tag: 'skip' };
    case 'original':
      return { tag: 'original' };
    default:
      return { tag: 'replace', val: json('filter', 'replacement data', d.data) };
  }
}

function shape(value) {
  if (value === undefined) return 'nothing (a missing `return`?)';
  if (value === null) return 'null';
  if (typeof value === 'object') return `an object (${value.constructor?.name ?? 'Object'})`;
  return `a ${typeof value} (${String(value).slice(0, 40)})`;
}

// ---------------------------------------------------------------------------------------
// the other direction, for the test harness: WIT answers back into decision objects

/** @internal */
export function subscribeDecisionFromWit(w) {
  if (w.tag === 'deny') return SubscribeDecision.deny(w.val);
  let d = w.val.audience == null ? SubscribeDecision.allow() : SubscribeDecision.allowWithAudience(w.val.audience);
  if (w.val.presenceInfoJson != null) d = d.withPresence(JSON.parse(w.val.presenceInfoJson));
  return d;
}

/** @internal */
export function publishDecisionFromWit(w) {
  if (w.tag === 'allow') return PublishDecision.allow();
  if (w.tag === 'replace') return PublishDecision.replace(JSON.parse(w.val));
  return PublishDecision.deny(w.val);
}

/** @internal */
export function deliveryFromWit(w) {
  if (w.tag === 'skip') return Delivery.skip();
  if (w.tag === 'original') return Delivery.original();
  return Delivery.replace(JSON.parse(w.val));
}

/** @internal */
export function descriptionFromWit(w, Options) {
  const d = new Description(w.name, w.version);
  for (const ns of w.namespaces) {
    const o = new Options();
    o.presence = ns.options.presence;
    o.historySize = ns.options.historySize;
    o.historyTtlSeconds = Number(ns.options.historyTtlSeconds);
    o.clientPublish = ns.options.clientPublish;
    d.namespace(ns.name, o);
  }
  if (w.filters) d.withFilter();
  return d;
}
