// SSE fallback: the page's WebSocket is blocked (its constructor replaced by one whose
// connections always fail, as behind a proxy that refuses upgrades), so the client falls back
// to one EventSource for all subscriptions and resumes it with the cursor (`lastEventId`).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { logged, studipId, testPage, until, world } from './harness.mjs';

const BLOCK_WEBSOCKET = `<script>
window.WebSocket = class BlockedWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Event('error'));
      this.onclose?.({ code: 1006, reason: '' });
    }, 10);
  }
  send() { throw new Error('blocked'); }
  close() {}
};
</script>`;

let w;
before(async () => {
  w = await world({ env: { STELLWERK_JWT_LEEWAY_SECONDS: '0' } });
  w.pages.state.pages.blocked = testPage({ head: BLOCK_WEBSOCKET });
  w.pages.state.pages.basic = testPage();
});
after(() => w?.close());

function member(course, name = 'Ada') {
  const user = studipId();
  w.pages.state.claims[user] = { perm: 'autor', courses: { [course]: 'autor' }, name };
  return user;
}

async function openClient(context, pageName, user, channels) {
  const page = await context.newPage();
  await page.goto(`${w.pages.origin}/page/${pageName}`);
  await page.evaluate(([url, user, channels]) => window.start(url, user, channels), [w.broker.ws, user, channels]);
  await until(page, (n) => log.filter((e) => e.kind === 'subscribed').length >= n, channels.length, 'subscribed');
  return page;
}

const dataOf = async (page) => (await logged(page, 'message')).map((m) => m.data.n);

test('WebSockets blocked: one EventSource carries messages and presence; commands say unsupported', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const news = `course:${course}:news`;
  const chat = `course:${course}:chat`;
  const page = await openClient(context, 'blocked', member(course), [news, chat]);
  const [connected] = await logged(page, 'connected');
  assert.equal(connected.transport, 'sse');

  for (let n = 1; n <= 3; n++) await w.broker.publish(news, { n });
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 3, undefined, 'messages over SSE');
  assert.deepEqual(await dataOf(page), [1, 2, 3]);

  // Another member comes in over a WebSocket: the SSE page sees the join.
  const bea = member(course, 'Bea');
  const other = await openClient(context, 'basic', bea, [chat]);
  await until(page, () => log.some((e) => e.kind === 'join'), undefined, 'join over SSE');
  assert.deepEqual(await logged(page, 'join'), [{ channel: chat, user: bea, info: { name: 'Bea' } }]);
  await other.close();

  const refused = await page.evaluate((c) => subs[c].publish({ text: 'x' }).then(() => null, (e) => e.code), chat);
  assert.equal(refused, 'unsupported');
});

test('SSE: a network drop is resumed with the cursor; a channel added later joins the stream', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const news = `course:${course}:news`;
  const page = await openClient(context, 'blocked', member(course), [news]);
  await w.broker.publish(news, { n: 1 });
  await until(page, () => log.some((e) => e.kind === 'message'), undefined, 'first message');

  await context.setOffline(true);
  await until(page, () => sw.state !== 'connected', undefined, 'offline noticed');
  for (let n = 2; n <= 3; n++) await w.broker.publish(news, { n });
  await context.setOffline(false);
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 3, undefined, 'resumed messages');
  assert.deepEqual(await dataOf(page), [1, 2, 3]);
  assert.equal((await logged(page, 'subscribed')).at(-1).recovered, true);
  assert.equal((await logged(page, 'unrecovered')).length, 0);

  const files = `course:${course}:files`;
  await page.evaluate((c) => {
    subs[c] = sw.subscribe(c, { onMessage: (data, meta) => note('message', { data, meta }), onSubscribed: (x) => note('subscribed', { channel: c, ...x }) });
  }, files);
  await until(page, (c) => log.some((e) => e.kind === 'subscribed' && e.value.channel === c), files, 'the new channel');
  await w.broker.publish(files, { n: 4 });
  await w.broker.publish(news, { n: 5 });
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 5, undefined, 'both channels');
  // Order holds within a channel; across channels the broker promises none (the course
  // plugin's `filter` runs per channel on its own lane).
  const data = await dataOf(page);
  assert.deepEqual(data.slice(0, 3), [1, 2, 3]);
  assert.deepEqual([...data.slice(3)].sort((a, b) => a - b), [4, 5]);
});

test('SSE: the stream ends at token expiry (4004) and comes back with a new token and the cursor', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const news = `course:${course}:news`;
  const user = member(course);
  w.pages.state.ttl = 3;
  t.after(() => (w.pages.state.ttl = 3600));
  const page = await openClient(context, 'blocked', user, [news]);
  await w.broker.publish(news, { n: 1 });
  await until(page, () => log.some((e) => e.kind === 'connecting' && e.value.code === 4004), undefined, 'the 4004 disconnect');
  await w.broker.publish(news, { n: 2 });
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 2, undefined, 'messages');
  assert.deepEqual(await dataOf(page), [1, 2]);
  assert.equal((await logged(page, 'unrecovered')).length, 0);
  assert.equal((await logged(page, 'disconnected')).length, 0);
});

test('SSE: a stream the broker refuses is reported as an error event with the broker code', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const page = await context.newPage();
  await page.goto(`${w.pages.origin}/page/blocked`);
  // A member of `course` asks for another course's channel: the plugin denies, 403 before the stream.
  await page.evaluate(([url, user, channels]) => window.start(url, user, channels), [
    w.broker.ws,
    member(course),
    [`course:${studipId()}:news`],
  ]);
  await until(page, () => log.some((e) => e.kind === 'error' && e.value.code === 'forbidden'), undefined, 'error event');
  const [error] = (await logged(page, 'error')).filter((e) => e.code === 'forbidden');
  assert.ok(error.message.length > 0);
  assert.equal(await page.evaluate(() => sw.state), 'connecting', 'it keeps trying (the token may change)');
});
