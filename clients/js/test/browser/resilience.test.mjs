// What a page lives through: a broker restart, a network drop, the back/forward cache, token
// expiry and refresh, revocation. Chromium against the real broker.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { logged, mintToken, nowSecs, sleep, studipId, testPage, until, world } from './harness.mjs';

let w;
before(async () => {
  // No clock leeway, so that short-lived tokens really end at their `exp`.
  w = await world({ env: { STELLWERK_JWT_LEEWAY_SECONDS: '0' } });
  w.pages.state.pages.basic = testPage();
  w.pages.state.pages.away = '<!doctype html><title>away</title><p>another page</p>';
});
after(() => w?.close());

function member(course, extra = {}) {
  const user = studipId();
  w.pages.state.claims[user] = { perm: 'autor', courses: { [course]: 'autor' }, name: 'Ada', ...extra };
  return user;
}

async function openClient(context, user, channels, opts) {
  const page = await context.newPage();
  await page.goto(`${w.pages.origin}/page/basic`);
  await page.evaluate(([url, user, channels, opts]) => window.start(url, user, channels, opts), [w.broker.ws, user, channels, opts]);
  await until(page, (n) => log.filter((e) => e.kind === 'subscribed').length >= n, channels.length, 'subscribed');
  return page;
}

const count = (page, kind) => page.evaluate((k) => log.filter((e) => e.kind === k).length, kind);
const dataOf = async (page) => (await logged(page, 'message')).map((m) => m.data.n);

test('network drop: offline, messages published meanwhile, online: recovered in order, nothing twice', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const channel = `course:${course}:news`;
  const page = await openClient(context, member(course), [channel]);
  await w.broker.publish(channel, { n: 1 });
  await until(page, () => log.some((e) => e.kind === 'message'), undefined, 'first message');

  await context.setOffline(true);
  await until(page, () => sw.state !== 'connected', undefined, 'the client noticing offline');
  for (let n = 2; n <= 4; n++) await w.broker.publish(channel, { n });
  await context.setOffline(false);
  await until(page, () => log.filter((e) => e.kind === 'subscribed').length >= 2, undefined, 'resubscribed');
  await w.broker.publish(channel, { n: 5 });
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 5, undefined, '5 messages');
  assert.deepEqual(await dataOf(page), [1, 2, 3, 4, 5]);
  const subscribed = await logged(page, 'subscribed');
  assert.equal(subscribed.at(-1).recovered, true);
  assert.equal(await count(page, 'unrecovered'), 0);
});

test('broker killed and restarted on the same port: reconnects, new epoch is reported, live again', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const channel = `course:${course}:news`;
  const page = await openClient(context, member(course), [channel]);
  const first = (await w.broker.publish(channel, { n: 1 })).results[0];
  await until(page, () => log.some((e) => e.kind === 'message'), undefined, 'first message');

  await w.restartBroker();
  // The in-memory engine starts a new epoch: the client cannot recover across it and says so.
  await until(page, () => log.some((e) => e.kind === 'unrecovered'), undefined, 'onUnrecovered');
  assert.equal(await page.evaluate(() => sw.state), 'connected');
  const second = (await w.broker.publish(channel, { n: 2 })).results[0];
  assert.notEqual(second.epoch, first.epoch);
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 2, undefined, 'message after restart');
  assert.deepEqual(await dataOf(page), [1, 2]);
  const messages = await logged(page, 'message');
  assert.equal(messages[1].meta.epoch, second.epoch);
  // Reconnecting was announced with the close code and reason, never as a final `disconnected`.
  const connecting = await logged(page, 'connecting');
  assert.ok(connecting.length >= 2);
  assert.equal(await count(page, 'disconnected'), 0);

  // After the restart, recovery works again within the new epoch.
  await context.setOffline(true);
  await until(page, () => sw.state !== 'connected', undefined, 'offline');
  await w.broker.publish(channel, { n: 3 });
  await context.setOffline(false);
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 3, undefined, 'recovered message');
  assert.deepEqual(await dataOf(page), [1, 2, 3]);
  assert.equal(await count(page, 'unrecovered'), 1);
});

test('bfcache: navigate away and back, the page is restored from the cache and recovers', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const channel = `course:${course}:news`;
  const page = await openClient(context, member(course), [channel]);
  await page.evaluate(() => {
    addEventListener('pageshow', (e) => note('pageshow', { persisted: e.persisted }));
    addEventListener('pagehide', (e) => note('pagehide', { persisted: e.persisted }));
  });
  await w.broker.publish(channel, { n: 1 });
  await until(page, () => log.some((e) => e.kind === 'message'), undefined, 'first message');

  await page.goto(`${w.pages.origin}/page/away`);
  // The client closed its socket on pagehide: the broker no longer counts the subscription.
  for (let i = 0; i < 200; i++) {
    const { channels } = await w.broker.api('GET', `/api/channels?prefix=course:${course}:`);
    if (!channels.length) break;
    await sleep(50);
  }
  for (let n = 2; n <= 3; n++) await w.broker.publish(channel, { n });
  await page.goBack({ waitUntil: 'commit' }); // a page restored from the cache fires no `load`
  await until(page, () => log.some((e) => e.kind === 'pageshow'), undefined, 'pageshow');
  assert.deepEqual(await logged(page, 'pageshow'), [{ persisted: true }], 'restored from the back/forward cache');
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 3, undefined, 'recovered messages');
  assert.deepEqual(await dataOf(page), [1, 2, 3]);
  assert.equal(await count(page, 'unrecovered'), 0);
  assert.deepEqual(await logged(page, 'disconnected'), [{ code: 1000, reason: 'pagehide' }]);
});

test('token refresh: short-lived tokens are refreshed through getToken before they expire', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const channel = `course:${course}:news`;
  const user = member(course);
  // Tokens living 4 s: the client refreshes halfway, so the connection outlives many of them.
  const q = await context.newPage();
  await q.goto(`${w.pages.origin}/page/basic`);
  const calls = () => w.pages.state.tokenCalls[user] ?? 0;
  const before = calls();
  w.pages.state.ttl = 4;
  try {
    await q.evaluate(([url, user, channel]) => window.start(url, user, [channel]), [w.broker.ws, user, channel]);
    await until(q, () => log.some((e) => e.kind === 'subscribed'), undefined, 'subscribed');
    // Wait for three refreshes: the first token has long expired by then.
    for (let i = 0; i < 400 && calls() < before + 4; i++) await sleep(50);
    assert.ok(calls() >= before + 4, `getToken called ${calls() - before} times`);
    await w.broker.publish(channel, { n: 1 });
    await until(q, () => log.some((e) => e.kind === 'message'), undefined, 'message after expiry of the first token');
    assert.equal(await count(q, 'connecting'), 1, 'never reconnected');
    assert.equal(await count(q, 'error'), 0);
  } finally {
    w.pages.state.ttl = 3600;
  }
});

test('token expiry (4004): a token not refreshed in time ends the connection; a new one is fetched and the subscription recovered', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const channel = `course:${course}:news`;
  const user = member(course);
  // Every token lives 3 s, and the refresh hands back the very token in use: the connection
  // ends with 4004 at its `exp`, and the client reconnects with a newly fetched token.
  const stale = mintToken(w.pages.state.secret, { sub: user, ...w.pages.state.claims[user], exp: nowSecs() + 3 });
  w.pages.state.tokenHook = (u, n) => (u === user && n <= 2 ? stale : undefined);
  try {
    const page = await openClient(context, user, [channel]);
    await w.broker.publish(channel, { n: 1 });
    await until(page, () => log.some((e) => e.kind === 'connecting' && e.value.code === 4004), undefined, 'close 4004');
    await w.broker.publish(channel, { n: 2 });
    await until(page, () => log.filter((e) => e.kind === 'message').length >= 2, undefined, 'messages');
    assert.deepEqual(await dataOf(page), [1, 2]);
    assert.equal(await count(page, 'unrecovered'), 0);
    assert.equal(await count(page, 'disconnected'), 0);
    assert.equal(await page.evaluate(() => sw.state), 'connected');
  } finally {
    w.pages.state.tokenHook = undefined;
  }
});

test('revocation: POST /api/users/{user}/disconnect (4003) stops the client for good', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const user = member(course);
  const page = await openClient(context, user, [`course:${course}:news`]);
  const reply = await w.broker.api('POST', `/api/users/${user}/disconnect`);
  assert.equal(reply.disconnected, 1);
  await until(page, () => log.some((e) => e.kind === 'disconnected'), undefined, 'disconnected');
  assert.deepEqual((await logged(page, 'disconnected'))[0].code, 4003);
  // Longer than the test's largest backoff window: no reconnect follows.
  await sleep(1500);
  assert.equal(await page.evaluate(() => sw.state), 'disconnected');
  assert.equal(await count(page, 'connecting'), 1, 'only the first connect');
  const { channels } = await w.broker.api('GET', `/api/channels?prefix=course:${course}:`);
  assert.deepEqual(channels, []);
});

test('revocation: a refreshed token without the course ends that subscription with the reason', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const kept = studipId();
  const user = studipId();
  w.pages.state.claims[user] = { perm: 'autor', courses: { [course]: 'autor', [kept]: 'autor' } };
  // The first token has both courses and lives 4 s; the refreshed one lacks `course`.
  w.pages.state.tokenHook = (u, n) =>
    u === user
      ? mintToken(w.pages.state.secret, {
          sub: user,
          perm: 'autor',
          courses: n === 1 ? { [course]: 'autor', [kept]: 'autor' } : { [kept]: 'autor' },
          exp: nowSecs() + (n === 1 ? 4 : 3600),
        })
      : undefined;
  try {
    const page = await openClient(context, user, [`course:${course}:news`, `course:${kept}:news`]);
    await until(page, () => log.some((e) => e.kind === 'unsubscribed'), undefined, 'unsubscribed');
    const [ended] = await logged(page, 'unsubscribed');
    assert.equal(ended.channel, `course:${course}:news`);
    assert.ok(ended.reason.length > 0);
    assert.equal(await page.evaluate((c) => subs[c].state, `course:${course}:news`), 'unsubscribed');
    await w.broker.publish(`course:${kept}:news`, { n: 1 });
    await until(page, () => log.some((e) => e.kind === 'message'), undefined, 'the other channel goes on');
  } finally {
    w.pages.state.tokenHook = undefined;
  }
});
