// Subscribe and receive, client publish in the course chat, presence between two pages,
// history, and the three-line example of docs/clients.md, in Chromium against the real broker.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { logged, repo, studipId, testPage, until, world } from './harness.mjs';

let w;
before(async () => {
  w = await world();
  w.pages.state.pages.basic = testPage();
});
after(() => w?.close());

/** A user who is `status` in `course`, with a display name. */
function member(course, status = 'autor', name = 'Ada') {
  const user = studipId();
  w.pages.state.claims[user] = { perm: 'autor', courses: { [course]: status }, name };
  return user;
}

async function openClient(user, channels, opts) {
  const page = await w.browser.newPage();
  await page.goto(`${w.pages.origin}/page/basic`);
  await page.evaluate(([url, user, channels, opts]) => window.start(url, user, channels, opts), [
    w.broker.ws,
    user,
    channels,
    opts,
  ]);
  await until(page, (n) => log.filter((e) => e.kind === 'subscribed').length >= n, channels.length, 'subscribed');
  return page;
}

const messages = (page) => logged(page, 'message');

test('subscribe and receive what PHP publishes, in order, with epoch and offset', async () => {
  const course = studipId();
  const channel = `course:${course}:news`;
  const page = await openClient(member(course), [channel]);
  const connected = await logged(page, 'connected');
  assert.equal(connected.length, 1);
  assert.equal(connected[0].transport, 'websocket');

  const results = [];
  for (let n = 1; n <= 3; n++) results.push((await w.broker.publish(channel, { type: 'news.created', n })).results[0]);
  await until(page, () => log.filter((e) => e.kind === 'message').length >= 3, undefined, '3 messages');
  const got = await messages(page);
  assert.deepEqual(
    got.map((m) => m.data.n),
    [1, 2, 3],
  );
  got.forEach((m, i) => {
    assert.deepEqual(m.meta, { channel, epoch: results[i].epoch, offset: results[i].offset });
  });
  await page.close();
});

test('client publish in the course chat reaches the other member, author set by the broker', async () => {
  const course = studipId();
  const channel = `course:${course}:chat`;
  const ada = member(course, 'autor', 'Ada');
  const bea = member(course, 'autor', 'Bea');
  const a = await openClient(ada, [channel]);
  const b = await openClient(bea, [channel]);
  const published = await a.evaluate((c) => subs[c].publish({ text: 'Hallo' }), channel);
  assert.equal(typeof published.epoch, 'string');
  assert.ok(published.offset >= 1);
  await until(b, () => log.some((e) => e.kind === 'message'), undefined, 'chat message');
  const [got] = await messages(b);
  assert.deepEqual(got.data, { text: 'Hallo', author: ada });
  assert.equal(got.meta.offset, published.offset);

  // A user with status `user` may read but not chat: the promise rejects with the broker's code.
  const lurker = member(course, 'user', 'Lu');
  const c = await openClient(lurker, [channel]);
  const refused = await c.evaluate((ch) => subs[ch].publish({ text: 'no' }).then(() => null, (e) => e.code), channel);
  assert.equal(refused, 'forbidden');
  for (const p of [a, b, c]) await p.close();
});

test('presence: join and leave between two pages, presence() lists the members', async () => {
  const course = studipId();
  const channel = `course:${course}:chat`;
  const ada = member(course, 'autor', 'Ada');
  const bea = member(course, 'tutor', 'Bea');
  const a = await openClient(ada, [channel]);
  const b = await openClient(bea, [channel]);
  await until(a, () => log.some((e) => e.kind === 'join'), undefined, 'join');
  assert.deepEqual(await logged(a, 'join'), [{ channel, user: bea, info: { name: 'Bea' } }]);
  const members = await b.evaluate((ch) => subs[ch].presence(), channel);
  assert.deepEqual(
    members,
    [
      { user: ada, info: { name: 'Ada' } },
      { user: bea, info: { name: 'Bea' } },
    ].sort((x, y) => (x.user < y.user ? -1 : 1)),
  );
  assert.deepEqual(await logged(b, 'join'), [], 'no join for the members already there');
  await b.close();
  await until(a, () => log.some((e) => e.kind === 'leave'), undefined, 'leave');
  assert.deepEqual(await logged(a, 'leave'), [{ channel, user: bea, info: { name: 'Bea' } }]);
  await a.close();
});

test('history returns the latest messages, oldest first', async () => {
  const course = studipId();
  const channel = `course:${course}:news`;
  for (let n = 1; n <= 5; n++) await w.broker.publish(channel, { n });
  const page = await openClient(member(course), [channel]);
  const history = await page.evaluate((ch) => subs[ch].history({ limit: 2 }), channel);
  assert.equal(typeof history.epoch, 'string');
  assert.deepEqual(
    history.messages.map((m) => m.data.n),
    [4, 5],
  );
  await page.close();
});

test('a refused subscription ends with onError and the others go on', async () => {
  const course = studipId();
  const other = studipId();
  const page = await openClient(member(course), [`course:${course}:news`]);
  await page.evaluate((ch) => {
    sw.subscribe(ch, { onError: (e) => note('suberror', { code: e.code }) });
    sw.subscribe('nowhere:x', { onError: (e) => note('suberror', { code: e.code }) });
  }, `course:${other}:news`);
  await until(page, () => log.filter((e) => e.kind === 'suberror').length >= 2, undefined, 'two refusals');
  assert.deepEqual((await logged(page, 'suberror')).map((e) => e.code).sort(), ['forbidden', 'not_found']);
  await w.broker.publish(`course:${course}:news`, { still: 'here' });
  await until(page, () => log.some((e) => e.kind === 'message'), undefined, 'message');
  await page.close();
});

test('the three-line example of docs/clients.md runs as written', async () => {
  const doc = readFileSync(join(repo, 'docs/clients.md'), 'utf8');
  const example = /<!-- example:browser -->\s*```js\n([\s\S]*?)```/.exec(doc);
  assert.ok(example, 'docs/clients.md has a ```js block after <!-- example:browser -->');
  const code = example[1].trim();
  assert.equal(code.split('\n').length, 3, 'three lines');
  const readme = readFileSync(join(repo, 'clients/js/README.md'), 'utf8');
  assert.ok(readme.includes(code), 'clients/js/README.md shows the same three lines');
  const course = studipId();
  const user = member(course);
  w.pages.state.defaultUser = user; // what /stellwerk/token answers: the logged-in user
  const page = await w.browser.newPage();
  await page.goto(`${w.pages.origin}/page/basic`);
  // The names the example uses: the broker's URL, the page's course, a function that shows data.
  await page.evaluate(
    ([brokerUrl, courseId, code]) => {
      const show = (data) => note('shown', data);
      new Function('Stellwerk', 'brokerUrl', 'courseId', 'show', code)(Stellwerk, brokerUrl, courseId, show);
    },
    [w.broker.ws, course, code],
  );
  // Publish until the subscription is live (the example has no callback for that).
  for (let n = 0; n < 200; n++) {
    await w.broker.publish(`course:${course}:news`, { type: 'news.created', n });
    const shown = await logged(page, 'shown');
    if (shown.length) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const shown = await logged(page, 'shown');
  assert.ok(shown.length >= 1, 'the example showed a message');
  assert.equal(shown[0].type, 'news.created');
  await page.close();
});
