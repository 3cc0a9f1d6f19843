// The STUDIP.JSUpdater bridge on a page with a stand-in for Stud.IP's JSUpdater (Stud.IP itself
// cannot run here): the same API (`start`, `stop`, `register`, `unregister`, and
// `processUpdate` as Stud.IP 4.x has it), polling `dispatch.php/jsupdater/get` on the page
// server and handing each index's value to its callback.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { logged, sleep, studipId, until, world } from './harness.mjs';

const FAKE_STUDIP = `<script>
window.log = [];
window.note = (kind, value) => log.push({ kind, value: JSON.parse(JSON.stringify(value ?? null)) });
(() => {
  const handlers = {};
  let timer = null;
  let active = false;
  const JSUpdater = {
    polls: 0,
    get active() { return active; },
    processUpdate(json) {
      for (const [index, value] of Object.entries(json)) handlers[index]?.callback(value);
    },
    poll() {
      const page_info = {};
      for (const [index, h] of Object.entries(handlers)) {
        const d = typeof h.data === 'function' ? h.data() : h.data;
        if (d != null) page_info[index] = d;
      }
      fetch('/dispatch.php/jsupdater/get', { method: 'POST', body: new URLSearchParams({ page: location.pathname, page_info: JSON.stringify(page_info) }) })
        .then((r) => r.json())
        .then((json) => { JSUpdater.polls++; JSUpdater.processUpdate(json); })
        .catch(() => undefined)
        .finally(() => { if (active) timer = setTimeout(JSUpdater.poll, 100); });
    },
    start() { if (!active) { active = true; timer = setTimeout(JSUpdater.poll, 100); } },
    stop() { active = false; clearTimeout(timer); },
    register(index, callback, data = null) { handlers[index] = { callback, data }; },
    unregister(index) { delete handlers[index]; },
  };
  window.STUDIP = { ABSOLUTE_URI_STUDIP: '/', JSUpdater };
  // Stud.IP starts the updater on every page, and code registers before the bridge is there.
  JSUpdater.start();
  JSUpdater.register('Early', (data) => note('Early', data));
})();
</script>`;

let w;
before(async () => {
  w = await world();
  w.pages.state.pages.studip = `<!doctype html><html><head><meta charset="utf-8">${FAKE_STUDIP}
<script src="/dist/stellwerk-jsupdater.js"></script></head><body></body></html>`;
});
after(() => w?.close());

test('the bridge hands pushes {index, data} to JSUpdater callbacks and polls only while the broker is away', async (t) => {
  const context = await w.browser.newContext();
  t.after(() => context.close());
  const course = studipId();
  const user = studipId();
  w.pages.state.claims[user] = { perm: 'autor', courses: { [course]: 'autor' } };
  const page = await context.newPage();
  await page.goto(`${w.pages.origin}/page/studip`);
  await page.evaluate(([url, user, course]) => {
    window.bridge = StellwerkJSUpdater.install({
      url,
      getToken: () => fetch('/token?user=' + user).then((r) => r.text()),
      user,
      courses: [course],
      minReconnectDelay: 50,
      maxReconnectDelay: 500,
    });
    bridge.client.on('connected', () => note('connected'));
    // Existing Stud.IP code, unchanged:
    STUDIP.JSUpdater.register('Blubber.getNewPosts', (data) => note('Blubber.getNewPosts', data), () => ({ since: 0 }));
  }, [w.broker.ws, user, course]);
  await until(page, () => bridge.subscriptions.every((s) => s.state === 'subscribed'), undefined, 'subscribed');
  assert.equal(await page.evaluate(() => STUDIP.JSUpdater.active), false, 'polling paused while connected');

  // What PHP's JsUpdater::push($userIds, $index, $data) publishes, on user:<id> …
  await w.broker.publish(`user:${user}`, { index: 'Blubber.getNewPosts', data: { posts: ['p1'] } });
  // … and on the page's course channel …
  await w.broker.publish(`course:${course}:jsupdater`, { index: 'Blubber.getNewPosts', data: { posts: ['p2'] } });
  // … and to an index registered before the bridge came (through processUpdate).
  await w.broker.publish(`user:${user}`, { index: 'Early', data: 42 });
  // Other messages on these channels are not for the JSUpdater.
  await w.broker.publish(`user:${user}`, { type: 'notification', id: 1 });
  await until(page, () => log.filter((e) => e.kind === 'Blubber.getNewPosts').length >= 2 && log.some((e) => e.kind === 'Early'), undefined, 'callbacks');
  assert.deepEqual(await logged(page, 'Blubber.getNewPosts'), [{ posts: ['p1'] }, { posts: ['p2'] }]);
  assert.deepEqual(await logged(page, 'Early'), [42]);

  // The broker goes away: polling of dispatch.php/jsupdater/get takes over at once.
  w.pages.state.polled = { 'Blubber.getNewPosts': { posts: ['polled'] } };
  await w.broker.stop('SIGKILL');
  await until(page, () => STUDIP.JSUpdater.active, undefined, 'polling resumed');
  await until(page, () => log.some((e) => e.kind === 'Blubber.getNewPosts' && e.value.posts[0] === 'polled'), undefined, 'a polled update');
  assert.ok(w.pages.state.polls >= 1);

  // Back again: polling pauses, pushes flow.
  w.pages.state.polled = {};
  await w.restartBroker();
  await until(page, () => !STUDIP.JSUpdater.active, undefined, 'polling paused again');
  await until(page, () => bridge.subscriptions.every((s) => s.state === 'subscribed'), undefined, 'resubscribed');
  await w.broker.publish(`user:${user}`, { index: 'Blubber.getNewPosts', data: { posts: ['p3'] } });
  await until(page, () => log.some((e) => e.kind === 'Blubber.getNewPosts' && e.value.posts[0] === 'p3'), undefined, 'push after restart');

  // stop()/unregister() keep their meaning.
  await page.evaluate(() => {
    STUDIP.JSUpdater.unregister('Blubber.getNewPosts');
    STUDIP.JSUpdater.stop();
  });
  await w.broker.publish(`user:${user}`, { index: 'Blubber.getNewPosts', data: { posts: ['gone'] } });
  await w.broker.publish(`user:${user}`, { index: 'Early', data: 43 });
  await until(page, () => log.filter((e) => e.kind === 'Early').length >= 2, undefined, 'barrier');
  assert.ok(!(await logged(page, 'Blubber.getNewPosts')).some((d) => d.posts[0] === 'gone'));
  await w.broker.stop('SIGKILL');
  await sleep(1000);
  assert.equal(await page.evaluate(() => STUDIP.JSUpdater.active), false, 'stopped by the page: no polling');
});
