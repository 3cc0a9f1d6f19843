// The demo page (clients/demo/index.html): course chat, presence list and notification bell,
// on the IIFE bundle, checked element by element and as a screenshot.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mintToken, nowSecs, studipId, testPage, until, world } from './harness.mjs';

const results = fileURLToPath(new URL('../../test-results', import.meta.url));
let w;
before(async () => {
  w = await world();
  w.pages.state.pages.basic = testPage();
});
after(() => w?.close());

test('demo: chat, presence list and notification bell work and are on the screenshot', async (t) => {
  const context = await w.browser.newContext({ viewport: { width: 1000, height: 640 } });
  t.after(() => context.close());
  const course = studipId();
  const ada = studipId();
  const bea = studipId();
  const claims = (name) => ({ perm: 'autor', courses: { [course]: 'autor' }, name });
  w.pages.state.claims[bea] = claims('Bea Beispiel');
  const token = mintToken(w.broker.secrets.jwtSecret, { sub: ada, ...claims('Ada Lovelace'), exp: nowSecs() + 3600 });

  const demo = await context.newPage();
  const errors = [];
  demo.on('pageerror', (e) => errors.push(e.message));
  const q = new URLSearchParams({ url: w.broker.ws, token, course });
  await demo.goto(`${w.pages.origin}/demo/index.html?${q}`);
  await until(demo, () => document.getElementById('status').textContent.startsWith('connected'), undefined, 'connected');
  await until(demo, () => document.querySelectorAll('#presence li').length === 1, undefined, 'self in presence');

  // Bea joins from another page (the client API, not the demo).
  const other = await context.newPage();
  await other.goto(`${w.pages.origin}/page/basic`);
  await other.evaluate(([url, user, ch]) => window.start(url, user, [ch]), [w.broker.ws, bea, `course:${course}:chat`]);
  await until(demo, () => document.querySelectorAll('#presence li').length === 2, undefined, 'Bea in presence');

  // Ada chats through the form; Bea chats through the API.
  await demo.fill('#chat-input', 'Guten Morgen!');
  await demo.click('#chat-send');
  await until(other, () => log.some((e) => e.kind === 'message'), undefined, 'Bea receives');
  await other.evaluate((ch) => subs[ch].publish({ text: 'Hallo Ada' }), `course:${course}:chat`);
  await until(demo, () => document.querySelectorAll('#messages li').length === 2, undefined, 'two chat lines');

  // Stud.IP notifies Ada: the bell counts it.
  await until(demo, (u) => window.stellwerk.getSubscription(`user:${u}`)?.state === 'subscribed', ada, 'bell subscribed');
  await w.broker.publish(`user:${ada}`, { type: 'blubber.comment.created', title: 'Neuer Kommentar in Blubber' });
  await until(demo, () => document.getElementById('bell-count').textContent === '1', undefined, 'bell count');

  const texts = await demo.evaluate(() => ({
    status: document.getElementById('status').textContent,
    presence: [...document.querySelectorAll('#presence li')].map((li) => li.textContent).sort(),
    messages: [...document.querySelectorAll('#messages li')].map((li) => li.textContent),
    bell: document.getElementById('bell-count').textContent,
  }));
  assert.equal(texts.status, 'connected (websocket)');
  assert.deepEqual(texts.presence, ['Ada Lovelace', 'Bea Beispiel']);
  assert.deepEqual(texts.messages, ['Ada LovelaceGuten Morgen!', 'Bea BeispielHallo Ada']);
  assert.equal(texts.bell, '1');
  assert.equal(await demo.isVisible('#setup'), false, 'the set-up form is hidden when the query has it all');
  for (const selector of ['#status', '#bell', '#bell-count', '#messages', '#chat-input', '#chat-send', '#presence']) {
    assert.ok(await demo.isVisible(selector), `${selector} is visible`);
  }

  mkdirSync(results, { recursive: true });
  const file = join(results, 'demo.png');
  await demo.screenshot({ path: file });
  const png = readFileSync(file);
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  assert.ok(statSync(file).size > 10_000, 'a screenshot with content');
  // The bell opens the list of notifications.
  await demo.click('#bell');
  assert.equal(await demo.textContent('#notifications li'), 'Neuer Kommentar in Blubber');
  assert.equal(await demo.textContent('#bell-count'), '');
  await demo.screenshot({ path: join(results, 'demo-bell.png') });
  assert.deepEqual(errors, []);
});
