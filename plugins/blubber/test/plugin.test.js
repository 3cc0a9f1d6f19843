// The blubber rules, run natively through the SDK's test harness (no broker, no wasm).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as testing from 'stellwerk-plugin-sdk/testing';
import { PublishRequest, SubscribeRequest } from 'stellwerk-plugin-sdk/testing';
import * as blubber from '../plugin.js';

const THREAD = 'blubber:0123456789abcdef0123456789abcdef';
const OTHER = 'blubber:fedcba9876543210fedcba9876543210';
const ALICE = 'a07535cf2f8a72df33c12ddfa4b53dde';
const page = { channels: [THREAD, 'user:' + ALICE] };

test('the description: presence, 100 messages for a day, client publish, no filter', () => {
  const d = testing.describe(blubber);
  assert.equal(d.name, 'blubber');
  assert.deepEqual(
    d.namespaces.map((ns) => ns.name),
    ['blubber'],
  );
  assert.deepEqual({ ...d.options('blubber') }, {
    presence: true,
    historySize: 100,
    historyTtlSeconds: 86400,
    clientPublish: true,
  });
  assert.equal(d.filters, false);
});

test('a token subscribes to exactly the channels in its channels claim', () => {
  const mine = SubscribeRequest.forChannel(THREAD).byUser(ALICE, page);
  assert.ok(testing.authorizeSubscribe(blubber, mine).isAllowed());

  const other = SubscribeRequest.forChannel(OTHER).byUser(ALICE, page);
  assert.equal(
    testing.authorizeSubscribe(blubber, other).denyReason(),
    `${OTHER} is not in this token's channels`,
  );
  // A prefix, a claim that is not an array, no claim at all: all refused.
  const prefix = SubscribeRequest.forChannel(THREAD).byUser(ALICE, { channels: ['blubber:'] });
  const notArray = SubscribeRequest.forChannel(THREAD).byUser(ALICE, { channels: THREAD });
  const none = SubscribeRequest.forChannel(THREAD).byUser(ALICE, { perm: 'root' });
  for (const req of [prefix, notArray, none]) {
    assert.ok(!testing.authorizeSubscribe(blubber, req).isAllowed(), JSON.stringify(req.identity.claims));
  }
});

test('anonymous connections and malformed thread ids are refused', () => {
  assert.equal(testing.authorizeSubscribe(blubber, SubscribeRequest.forChannel(THREAD)).denyReason(), 'login required');
  for (const channel of ['blubber:ABCDEF0123456789abcdef0123456789', 'blubber:abc', `${THREAD}:x`, 'blubber:']) {
    const req = SubscribeRequest.forChannel(channel).byUser(ALICE, { channels: [channel] });
    assert.match(testing.authorizeSubscribe(blubber, req).denyReason(), /32 hex/, channel);
  }
});

test('a client publish gets author from sub and text cut to 5,000 characters', () => {
  const req = PublishRequest.forChannel(THREAD)
    .withData({ text: 'ä'.repeat(6000), author: 'someone else', type: 'blubber.comment.created' })
    .byUser(ALICE, page);
  const decision = testing.onPublish(blubber, req);
  const data = decision.replacement();
  assert.equal(data.author, ALICE);
  assert.equal(data.text, 'ä'.repeat(5000));
  assert.equal(data.type, 'blubber.comment.created');

  // Characters, not UTF-16 units: 5,000 emoji stay 5,000 emoji.
  const emoji = testing.onPublish(blubber, req.withData({ text: '🫧'.repeat(5001) })).replacement();
  assert.equal(Array.from(emoji.text).length, 5000);
  const short = testing.onPublish(blubber, req.withData({ text: 'moin' })).replacement();
  assert.deepEqual(short, { text: 'moin', author: ALICE });
});

test('clients publish only where they may subscribe, and only objects with a text', () => {
  const elsewhere = PublishRequest.forChannel(OTHER).withData({ text: 'hi' }).byUser(ALICE, page);
  assert.equal(testing.onPublish(blubber, elsewhere).denyReason(), `${OTHER} is not in this token's channels`);
  for (const data of ['hi', [1], null, { text: 3 }, {}]) {
    const req = PublishRequest.forChannel(THREAD).withData(data).byUser(ALICE, page);
    assert.ok(!testing.onPublish(blubber, req).isAllowed(), JSON.stringify(data));
  }
});

test("Stud.IP's server publishes on any thread, unchanged", () => {
  const http = PublishRequest.forChannel(OTHER).withData({ type: 'blubber.comment.created', id: 7 });
  const decision = testing.onPublish(blubber, http);
  assert.equal(decision.kind, 'allow');
  assert.ok(!testing.onPublish(blubber, PublishRequest.forChannel('blubber:x')).isAllowed());
});
