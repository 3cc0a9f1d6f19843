// The SDK: the adapter as the component exports drive it, the defaults, the test harness.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Channel,
  ChannelOptions,
  Delivery,
  Description,
  Identity,
  PublishDecision,
  Source,
  SubscribeDecision,
  host,
} from '../src/index.js';
import { exportsFor, problem } from '../src/abi.js';
import * as testing from '../src/testing.js';
import { FilterRequest, PublishRequest, SubscribeRequest } from '../src/testing.js';

process.env.STELLWERK_PLUGIN_QUIET_LOGS = '1';

/** A plugin with every hook, like the Rust SDK's adapter test. */
const rules = {
  describe: () =>
    new Description('rules', '0.1.0')
      .namespace('course', new ChannelOptions().withPresence().history(5, 90))
      .withFilter(),
  authorizeSubscribe(req) {
    if (!req.identity) return SubscribeDecision.deny('login required');
    switch (req.identity.claimEntry('courses', req.channel.rest)) {
      case 'dozent':
        return SubscribeDecision.allowWithAudience('staff').withPresence({ user: req.identity.user });
      case undefined:
        return SubscribeDecision.deny('not a member');
      default:
        return SubscribeDecision.allow();
    }
  },
  onPublish(req) {
    return req.source === Source.Client
      ? PublishDecision.replace({ by: req.user(), text: req.data.text })
      : PublishDecision.allow();
  },
  filter(req, audience) {
    if (audience === 'staff') return Delivery.original();
    if (req.data.internal === true) return Delivery.skip();
    return Delivery.replace({ text: req.data.text });
  },
};

/** Only describe: every other hook must fail closed as in Rust. */
const bare = { describe: () => new Description('bare', '1').namespace('bare', new ChannelOptions()) };

const witId = (user, claimsJson) => ({ user, claimsJson });

test('describe reaches the wire format', () => {
  const d = exportsFor(rules).describe();
  assert.deepEqual(d, {
    name: 'rules',
    version: '0.1.0',
    filters: true,
    namespaces: [
      { name: 'course', options: { presence: true, historySize: 5, historyTtlSeconds: 90, clientPublish: false } },
    ],
  });
  assert.equal(exportsFor(bare).describe().filters, false);
});

test('subscribe parses claims and encodes the grant', () => {
  const allow = exportsFor(rules).authorizeSubscribe({
    channel: 'course:c1',
    identity: witId('u1', '{"courses":{"c1":"dozent"}}'),
  });
  assert.deepEqual(allow, { tag: 'allow', val: { audience: 'staff', presenceInfoJson: '{"user":"u1"}' } });
  const deny = exportsFor(rules).authorizeSubscribe({
    channel: 'course:c2',
    identity: witId('u1', '{"courses":{"c1":"dozent"}}'),
  });
  assert.deepEqual(deny, { tag: 'deny', val: 'not a member' });
  const plain = exportsFor(rules).authorizeSubscribe({ channel: 'course:c1', identity: witId('u1', '{"courses":{"c1":"autor"}}') });
  assert.deepEqual(plain, { tag: 'allow', val: { audience: null, presenceInfoJson: null } });
});

test('malformed claims or data from the host fail closed, with a log line', () => {
  testing.takeLogs();
  const sub = exportsFor(rules).authorizeSubscribe({ channel: 'course:c1', identity: witId('u1', '{not json') });
  assert.equal(sub.tag, 'deny');
  assert.match(sub.val, /claims that are not JSON/);
  const pub = exportsFor(rules).onPublish({ channel: 'course:c1', dataJson: '', source: 'http', identity: null });
  assert.equal(pub.tag, 'deny');
  const filtered = exportsFor(rules).filter({ channel: 'course:c1', dataJson: 'nope', audiences: ['', 'staff', 'x'] });
  assert.deepEqual(filtered, [{ tag: 'skip' }, { tag: 'skip' }, { tag: 'skip' }]);
  assert.equal(testing.takeLogs().filter(([level]) => level === 'error').length, 3);
});

test('publish replace is encoded as JSON', () => {
  const d = exportsFor(rules).onPublish({
    channel: 'course:c1',
    dataJson: '{"text":"hi","spoof":1}',
    source: 'client',
    identity: witId('u1', '{}'),
  });
  assert.deepEqual(d, { tag: 'replace', val: '{"by":"u1","text":"hi"}' });
});

test('filter answers once per audience, in order', () => {
  const req = (dataJson) => ({ channel: 'course:c1', dataJson, audiences: ['', 'staff', 'other'] });
  assert.deepEqual(exportsFor(rules).filter(req('{"text":"t","secret":1}')), [
    { tag: 'replace', val: '{"text":"t"}' },
    { tag: 'original' },
    { tag: 'replace', val: '{"text":"t"}' },
  ]);
  assert.deepEqual(exportsFor(rules).filter(req('{"internal":true}')), [
    { tag: 'skip' },
    { tag: 'original' },
    { tag: 'skip' },
  ]);
});

test('the defaults fail closed, as the Rust trait does', () => {
  const e = exportsFor(bare);
  const sub = e.authorizeSubscribe({ channel: 'bare:x', identity: witId('u1', '{"perm":"root"}') });
  assert.deepEqual(sub, { tag: 'deny', val: 'this channel does not accept subscriptions' });
  const publish = (source) => e.onPublish({ channel: 'bare:x', dataJson: '{}', source, identity: null });
  assert.deepEqual(publish('http'), { tag: 'allow' });
  assert.deepEqual(publish('client'), { tag: 'deny', val: 'clients may not publish on this channel' });
  assert.deepEqual(e.filter({ channel: 'bare:x', dataJson: '{}', audiences: [''] }), [{ tag: 'original' }]);
});

test('answers the broker could not use throw (a fault), naming the hook and the fix', () => {
  testing.takeLogs();
  const broken = {
    describe: bare.describe,
    authorizeSubscribe: () => true,
    onPublish: () => PublishDecision.replace(undefined),
    filter: () => undefined,
  };
  const e = exportsFor(broken);
  assert.throws(() => e.authorizeSubscribe({ channel: 'bare:x', identity: null }), /authorizeSubscribe answered a boolean \(true\), not a SubscribeDecision/);
  assert.throws(() => e.onPublish({ channel: 'bare:x', dataJson: '1', source: 'http', identity: null }), /replacement data that is not JSON/);
  assert.throws(() => e.filter({ channel: 'bare:x', dataJson: '1', audiences: [''] }), /filter answered nothing \(a missing `return`\?\)/);
  assert.throws(() => exportsFor({ describe: () => ({ name: 'x' }) }).describe(), /not a Description/);

  const thrower = { describe: bare.describe, authorizeSubscribe: () => { throw new Error('boom'); } };
  assert.throws(() => exportsFor(thrower).authorizeSubscribe({ channel: 'bare:x', identity: null }), /boom/);
  const logs = testing.takeLogs();
  assert.ok(logs.some(([level, line]) => level === 'error' && line.startsWith('plugin threw in authorizeSubscribe: Error: boom')), JSON.stringify(logs));
});

test('a module that is no plugin is named as such', () => {
  assert.match(problem({}), /exports no `describe` function/);
  assert.match(problem({ describe: bare.describe, onPublish: 3 }), /`onPublish`, but it is not a function/);
  assert.match(problem({ describe: bare.describe, authorizesubscribe() {} }), /`authorizesubscribe`: hooks are spelt/);
  assert.equal(problem(rules), null);
  assert.throws(() => exportsFor({}), TypeError);
});

test('channels split at the first colon; segments is an array', () => {
  const c = new Channel('course:abc:chat');
  assert.deepEqual([c.namespace, c.rest, c.segments], ['course', 'abc:chat', ['abc', 'chat']]);
  assert.equal(c.segments[1], 'chat');
  assert.equal(`${c}`, 'course:abc:chat');
  assert.ok(c.is('course:abc:chat'));
  const bareChannel = new Channel('public');
  assert.deepEqual([bareChannel.namespace, bareChannel.rest, bareChannel.segments], ['public', '', []]);
  assert.deepEqual(new Channel('public:').segments, []);
});

test('claim helpers read Stud.IP tokens', () => {
  const id = new Identity('u1', { perm: 'dozent', courses: { c1: 'tutor' }, channels: ['user:u1'], n: 3, ok: true });
  assert.equal(id.claimStr('perm'), 'dozent');
  assert.equal(id.claimEntry('courses', 'c1'), 'tutor');
  assert.equal(id.claimEntry('courses', 'c2'), undefined);
  assert.equal(id.claimEntry('courses', 'toString'), undefined);
  assert.ok(id.claimContains('channels', 'user:u1'));
  assert.ok(!id.claimContains('channels', 'user:u2'));
  assert.ok(!id.claimContains('perm', 'dozent'));
  assert.equal(id.claimNumber('n'), 3);
  assert.equal(id.claimBool('ok'), true);
  assert.equal(id.claimStr('n'), undefined);
  assert.equal(id.claim('missing'), undefined);
  assert.equal(id.claim('constructor'), undefined);
});

test('decision helpers: presence attaches to allows only', () => {
  const allowed = SubscribeDecision.allowWithAudience('staff').withPresence({ name: 'Ada' });
  assert.equal(allowed.audience(), 'staff');
  assert.deepEqual(allowed.presenceInfo(), { name: 'Ada' });
  const denied = SubscribeDecision.deny('no').withPresence({ name: 'Ada' });
  assert.equal(denied.denyReason(), 'no');
  assert.equal(denied.presenceInfo(), undefined);
  assert.ok(PublishDecision.replace(1).isAllowed());
  assert.ok(!PublishDecision.deny('x').isAllowed());
  assert.equal(PublishDecision.allow().denyReason(), null);
});

test('descriptions are validated as the broker validates them', () => {
  const ok = new ChannelOptions();
  assert.match(new Description('p', '1').validate(), /no namespace/);
  assert.match(new Description('p', '1').namespace('Public', ok).validate(), /"Public"/);
  assert.ok(new Description('p', '1').namespace('a'.repeat(65), ok).validate());
  assert.match(new Description('p', '1').namespace('a', ok).namespace('a', ok).validate(), /twice/);
  assert.ok(new Description('', '1').namespace('a', ok).validate());
  assert.equal(new Description('p', '1').namespace('a_b-9', ok).validate(), null);
  assert.throws(() => new ChannelOptions().history(-1, 10), RangeError);
  assert.throws(() => new ChannelOptions().history(1, 1.5), RangeError);
  assert.throws(() => testing.describe({ describe: () => new Description('b', '1').namespace('Not Valid') }), /would refuse this description: namespace "Not Valid"/);
});

test('the request builders fill the requests as the Rust testing module does', () => {
  const sub = SubscribeRequest.forChannel('public:news').byUser('u1', { perm: 'autor' });
  assert.equal(sub.channel.namespace, 'public');
  assert.equal(sub.user(), 'u1');
  assert.equal(sub.identity.claimStr('perm'), 'autor');
  assert.equal(SubscribeRequest.forChannel('public:news').identity, null);

  const http = PublishRequest.forChannel('public:news').withData({ a: 1 });
  assert.deepEqual([http.source, http.user(), http.data], [Source.Http, null, { a: 1 }]);
  const client = http.byUser('u2', {});
  assert.deepEqual([client.source, client.user(), client.data], [Source.Client, 'u2', { a: 1 }]);
  assert.equal(PublishRequest.forChannel('x:y').data, null);
  assert.deepEqual(FilterRequest.forChannel('f:x').withData(1).data, 1);
});

test('the harness runs missing hooks with their defaults and insists on withFilter', () => {
  assert.equal(testing.authorizeSubscribe(bare, SubscribeRequest.forChannel('bare:x').byUser('u', {})).denyReason(), 'this channel does not accept subscriptions');
  assert.ok(!testing.onPublish(bare, PublishRequest.forChannel('bare:x').byUser('u', {})).isAllowed());
  assert.throws(() => testing.filter(bare, FilterRequest.forChannel('bare:x'), ['']), /add `\.withFilter\(\)`/);
  const out = testing.filter(rules, FilterRequest.forChannel('course:c1').withData({ text: 't', internal: true }), ['', 'staff']);
  assert.deepEqual(out, [Delivery.skip(), Delivery.original()]);
  const staff = testing.authorizeSubscribe(rules, SubscribeRequest.forChannel('course:c1').byUser('u1', { courses: { c1: 'dozent' } }));
  assert.deepEqual(staff.presenceInfo(), { user: 'u1' });
});

test('host stand-ins are settable', () => {
  assert.deepEqual(host.config(), {});
  testing.setConfig({ greeting: 'moin' });
  assert.equal(host.config().greeting, 'moin');
  testing.setConfig({});
  testing.setNowMs(42);
  assert.equal(host.nowMs(), 42);
  testing.setNowMs(null);
  assert.ok(host.nowMs() > 1_600_000_000_000);
  testing.takeLogs();
  host.warn('careful');
  assert.deepEqual(testing.takeLogs(), [['warn', 'careful']]);
  assert.deepEqual(testing.takeLogs(), []);
  assert.throws(() => host.log('loud', 'x'), /log level must be one of/);
});
