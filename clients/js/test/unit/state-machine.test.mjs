// The client's state machine, driven through a stand-in WebSocket that the test plays the
// broker's part on (frames as in docs/protocol.md). The real broker is in test/browser/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Stellwerk } from '../../dist/index.js';

/** A WebSocket whose far end is the test. */
function fakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000) {
      this.readyState = 3;
      this.closedWith = code;
    }
    // The broker's side:
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    push(...frames) {
      this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join('\n') });
    }
    reply(type, fields = {}) {
      const cmd = this.sent.findLast((c) => c.type === type);
      this.push({ id: cmd.id, ...fields });
    }
    drop(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { sockets, FakeWebSocket };
}

/** Waits (bounded) until `cond()` holds. */
async function until(cond, what = 'condition') {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

function client(opts = {}) {
  const { sockets, FakeWebSocket } = fakeSockets();
  const events = [];
  let tokens = 0;
  const sw = new Stellwerk('ws://broker.test/ws', {
    getToken: async () => `token-${++tokens}`,
    WebSocket: FakeWebSocket,
    EventSource: undefined,
    transports: ['websocket'],
    minReconnectDelay: 1,
    maxReconnectDelay: 10,
    pingInterval: 0,
    ...opts,
  });
  for (const e of ['connecting', 'connected', 'disconnected', 'error']) sw.on(e, (v) => events.push([e, v]));
  const last = () => sockets.at(-1);
  /** Opens the latest socket and answers `connect`. */
  const accept = async (fields = {}) => {
    await until(() => sockets.length && last().readyState === 0 && last().onopen, 'a socket');
    last().open();
    await until(() => last().sent.some((c) => c.type === 'connect'), 'connect');
    last().reply('connect', { type: 'connected', client: 'c1', user: 'u1', ...fields });
    await until(() => sw.state === 'connected', 'connected');
  };
  return { sw, sockets, events, last, accept, tokens: () => tokens };
}

const kinds = (events) => events.map(([e]) => e);

test('connect: token from getToken in the connect frame, batching asked for, subscriptions sent', async () => {
  const c = client();
  const seen = [];
  const sub = c.sw.subscribe('course:x:news', { onMessage: (data, meta) => seen.push([data, meta]) });
  assert.equal(sub.state, 'subscribing');
  c.sw.connect();
  await c.accept({ expires_at: Math.floor(Date.now() / 1000) + 3600 });
  const connect = c.last().sent[0];
  assert.deepEqual(connect, { id: connect.id, type: 'connect', token: 'token-1', batch: true });
  await until(() => c.last().sent.some((s) => s.type === 'subscribe'));
  c.last().reply('subscribe', { type: 'subscribed', channel: 'course:x:news', epoch: 'e', offset: 7 });
  await until(() => sub.state === 'subscribed');
  // A batched frame: two pushes separated by a newline.
  c.last().push(
    { type: 'message', channel: 'course:x:news', epoch: 'e', offset: 8, data: { n: 1 } },
    { type: 'message', channel: 'course:x:news', epoch: 'e', offset: 9, data: { n: 2 } },
  );
  assert.deepEqual(seen, [
    [{ n: 1 }, { channel: 'course:x:news', epoch: 'e', offset: 8 }],
    [{ n: 2 }, { channel: 'course:x:news', epoch: 'e', offset: 9 }],
  ]);
  assert.deepEqual(kinds(c.events), ['connecting', 'connected']);
  assert.equal(c.events[1][1].transport, 'websocket');
  c.sw.disconnect();
  assert.deepEqual(c.events.at(-1), ['disconnected', { code: 1000, reason: 'disconnect called' }]);
});

test('1006: reconnect with backoff, resubscribe with recover from the last position, replay delivered once', async () => {
  const c = client();
  const seen = [];
  let unrecovered = 0;
  c.sw.subscribe('public:a', { onMessage: (d) => seen.push(d.n), onUnrecovered: () => unrecovered++ });
  c.sw.connect();
  await c.accept();
  await until(() => c.last().sent.some((s) => s.type === 'subscribe'));
  c.last().reply('subscribe', { type: 'subscribed', channel: 'public:a', epoch: 'e', offset: 0 });
  c.last().push({ type: 'message', channel: 'public:a', epoch: 'e', offset: 1, data: { n: 1 } });
  c.last().drop(1006);
  assert.equal(c.sw.state, 'connecting');
  assert.deepEqual(c.events.at(-1), ['connecting', { code: 1006, reason: '' }]);
  await c.accept();
  await until(() => c.last().sent.some((s) => s.type === 'subscribe'));
  const resub = c.last().sent.find((s) => s.type === 'subscribe');
  assert.deepEqual(resub.recover, { epoch: 'e', offset: 1 });
  c.last().reply('subscribe', { type: 'subscribed', channel: 'public:a', epoch: 'e', offset: 3, recovered: true });
  c.last().push(
    { type: 'message', channel: 'public:a', epoch: 'e', offset: 2, data: { n: 2 } },
    { type: 'message', channel: 'public:a', epoch: 'e', offset: 3, data: { n: 3 } },
    { type: 'message', channel: 'public:a', epoch: 'e', offset: 3, data: { n: 3 } },
  );
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(unrecovered, 0);

  // Not recovered (another epoch): onUnrecovered, and the new position counts.
  c.last().drop(4008, 'slow consumer');
  await c.accept();
  await until(() => c.last().sent.some((s) => s.type === 'subscribe'));
  c.last().reply('subscribe', { type: 'subscribed', channel: 'public:a', epoch: 'f', offset: 10, recovered: false });
  assert.equal(unrecovered, 1);
  c.last().push({ type: 'message', channel: 'public:a', epoch: 'f', offset: 11, data: { n: 11 } });
  assert.deepEqual(seen, [1, 2, 3, 11]);
  c.sw.disconnect();
});

test('4003: the client stops for good', async () => {
  const c = client();
  c.sw.connect();
  await c.accept();
  c.last().push({ type: 'disconnect', code: 4003, reason: 'disconnected by the server' });
  c.last().drop(1006); // the close frame did not make it: the disconnect push counts
  assert.equal(c.sw.state, 'disconnected');
  assert.deepEqual(c.events.at(-1), ['disconnected', { code: 4003, reason: 'disconnected by the server' }]);
  await new Promise((r) => setTimeout(r, 50)); // longer than the whole backoff window
  assert.equal(c.sockets.length, 1);
});

test('4001: one new token, then stop with an error event', async () => {
  const c = client();
  c.sw.connect();
  await until(() => c.sockets.length === 1);
  c.last().open();
  c.last().drop(4001, 'token refused');
  await until(() => c.sockets.length === 2, 'a second attempt');
  assert.equal(c.tokens(), 2, 'a new token was fetched');
  c.last().open();
  c.last().drop(4001, 'token refused');
  assert.equal(c.sw.state, 'disconnected');
  assert.deepEqual(kinds(c.events), ['connecting', 'error', 'disconnected']);
  assert.deepEqual(c.events[1][1], { code: 4001, message: 'token refused' });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(c.sockets.length, 2);
});

test('4004: a new token, then reconnect; with a fixed token only: stop with an error', async () => {
  const c = client();
  c.sw.connect();
  await c.accept();
  c.last().drop(4004, 'token expired');
  await c.accept();
  assert.equal(c.tokens(), 2);
  assert.equal(c.last().sent[0].token, 'token-2');
  c.sw.disconnect();

  const fixed = client({ getToken: undefined, token: 'static' });
  fixed.sw.connect();
  await fixed.accept();
  fixed.last().drop(4004, 'token expired');
  assert.equal(fixed.sw.state, 'disconnected');
  assert.deepEqual(kinds(fixed.events).slice(-2), ['error', 'disconnected']);
});

test('refresh: before expires_at the client sends refresh with a fresh token', async () => {
  const c = client();
  c.sw.connect();
  // Expires in 2 s: refreshed halfway.
  await c.accept({ expires_at: Math.floor(Date.now() / 1000) + 2 });
  await until(() => c.last().sent.some((s) => s.type === 'refresh'), 'refresh');
  assert.equal(c.last().sent.find((s) => s.type === 'refresh').token, 'token-2');
  c.last().reply('refresh', { type: 'refreshed', expires_at: Math.floor(Date.now() / 1000) + 3600 });
  c.sw.disconnect();
});

test('commands wait for the connection; errors carry the broker code', async () => {
  const c = client();
  const sub = c.sw.subscribe('course:x:chat');
  c.sw.connect();
  const published = sub.publish({ text: 'hi' });
  await c.accept();
  await until(() => c.last().sent.some((s) => s.type === 'publish'));
  c.last().reply('publish', { type: 'published', channel: 'course:x:chat', epoch: 'e', offset: 5 });
  assert.deepEqual(await published, { epoch: 'e', offset: 5 });
  const presence = sub.presence();
  await until(() => c.last().sent.some((s) => s.type === 'presence'));
  c.last().reply('presence', { type: 'error', code: 'forbidden', message: 'not a member' });
  await assert.rejects(presence, { name: 'StellwerkError', code: 'forbidden', message: 'not a member' });
  c.sw.disconnect();
  await assert.rejects(sub.history(), { code: 'disconnected' });
});

test('unsubscribed push: a revocation ends the subscription; an interruption resubscribes with recover', async () => {
  const c = client();
  const reasons = [];
  const a = c.sw.subscribe('course:x:a', { onUnsubscribed: (r) => reasons.push(r) });
  const b = c.sw.subscribe('course:x:b');
  c.sw.connect();
  await c.accept();
  await until(() => c.last().sent.filter((s) => s.type === 'subscribe').length === 2);
  for (const s of c.last().sent.filter((s) => s.type === 'subscribe'))
    c.last().push({ id: s.id, type: 'subscribed', channel: s.channel, epoch: 'e', offset: 4 });
  c.last().push({ type: 'unsubscribed', channel: 'course:x:a', reason: 'not a member of this course' });
  assert.equal(a.state, 'unsubscribed');
  assert.deepEqual(reasons, ['not a member of this course']);
  assert.equal(c.sw.getSubscription('course:x:a'), undefined);

  c.last().push({
    type: 'unsubscribed',
    channel: 'course:x:b',
    reason: "the channel's stream was interrupted; subscribe again with `recover` to get what was missed",
  });
  assert.equal(b.state, 'subscribing');
  const again = c.last().sent.filter((s) => s.type === 'subscribe' && s.channel === 'course:x:b').at(-1);
  assert.deepEqual(again.recover, { epoch: 'e', offset: 4 });
  c.sw.disconnect();
});

test('subscribe twice to one channel is refused at once; a refused subscribe ends with onError', async () => {
  const c = client();
  const errors = [];
  c.sw.subscribe('nowhere:x', { onError: (e) => errors.push(e.code) });
  assert.throws(() => c.sw.subscribe('nowhere:x'), { code: 'bad_request' });
  c.sw.connect();
  await c.accept();
  await until(() => c.last().sent.some((s) => s.type === 'subscribe'));
  c.last().reply('subscribe', { type: 'error', code: 'not_found', message: 'no plugin' });
  await until(() => errors.length === 1);
  assert.deepEqual(errors, ['not_found']);
  assert.equal(c.sw.getSubscription('nowhere:x'), undefined);
  c.sw.disconnect();
});

test('without a WebSocket the client uses one EventSource for all channels, with the token', async () => {
  const sources = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      sources.push(this);
    }
    addEventListener() {}
    close() {}
  }
  const sw = new Stellwerk('wss://broker.test/ws', { token: 't', EventSource: FakeEventSource, transports: ['sse'] });
  sw.subscribe('public:a');
  sw.subscribe('course:x:b');
  sw.connect();
  await until(() => sources.length === 1);
  const url = new URL(sources[0].url);
  assert.equal(url.origin + url.pathname, 'https://broker.test/sse');
  assert.deepEqual(url.searchParams.getAll('channel'), ['public:a', 'course:x:b']);
  assert.equal(url.searchParams.get('token'), 't');
  sw.disconnect();
});

test('a subscribe made in a `connected` listener is sent once', async () => {
  const c = client();
  c.sw.subscribe('public:a');
  c.sw.on('connected', ({ user }) => c.sw.subscribe(`user:${user}`));
  c.sw.connect();
  await c.accept();
  await until(() => c.last().sent.filter((s) => s.type === 'subscribe').length === 2);
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(
    c.last().sent.filter((s) => s.type === 'subscribe').map((s) => s.channel),
    ['public:a', 'user:u1'],
  );
  c.sw.disconnect();
});
