// Harness of the browser tests: the real `stellwerk` binary on 127.0.0.1, a tiny page server
// on 127.0.0.1 (test pages, the built bundles, a token endpoint standing in for Stud.IP, a fake
// `dispatch.php/jsupdater/get`), and headless Chromium through playwright-core.
//
// Environment:
// - STELLWERK_BIN: the broker binary (default ../../target/debug/stellwerk from clients/js)
// - STELLWERK_PLUGINS_DIR: the built plugins (default ../../target/plugins)
// - CHROMIUM: the browser (default /usr/bin/chromium)
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const pkg = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const repo = resolve(pkg, '../..');
export const BIN = resolve(pkg, process.env.STELLWERK_BIN ?? '../../target/debug/stellwerk');
export const PLUGINS = resolve(pkg, process.env.STELLWERK_PLUGINS_DIR ?? '../../target/plugins');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** How long any wait may take before the test fails (generous: the machine may be busy). */
export const WAIT = 20_000;

export const hex = (n) => randomBytes(n).toString('hex');
export const nowSecs = () => Math.floor(Date.now() / 1000);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An HS256 JWT, as Stud.IP's PHP mints it. */
export function mintToken(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/**
 * Starts the broker and waits until it says where it listens. `port` 0 picks a free one;
 * pass a previous broker's port (and secrets) to restart it in the same place.
 */
export async function startBroker({ port = 0, env = {}, secrets } = {}) {
  for (const [what, path] of [
    ['STELLWERK_BIN', BIN],
    ['STELLWERK_PLUGINS_DIR', PLUGINS],
  ]) {
    if (!existsSync(path)) throw new Error(`${what}: ${path} does not exist (build the broker and plugins, or set ${what})`);
  }
  const apiKey = secrets?.apiKey ?? hex(24);
  const jwtSecret = secrets?.jwtSecret ?? hex(32);
  const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('STELLWERK_')));
  Object.assign(childEnv, {
    STELLWERK_LISTEN: `127.0.0.1:${port}`,
    STELLWERK_API_KEY: apiKey,
    STELLWERK_JWT_SECRET: jwtSecret,
    STELLWERK_PLUGINS_DIR: PLUGINS,
    // The cache `cargo xtask test` shares with the Rust tests' brokers (else the default).
    ...(process.env.STELLWERK_PLUGINS_COMPILE_CACHE_DIR
      ? { STELLWERK_PLUGINS_COMPILE_CACHE_DIR: process.env.STELLWERK_PLUGINS_COMPILE_CACHE_DIR }
      : {}),
    STELLWERK_PLUGINS_WATCH: 'false',
    RUST_LOG: 'info',
    NO_COLOR: '1',
    ...env,
  });
  const child = spawn(BIN, ['serve'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const addr = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`broker did not start within ${WAIT} ms:\n${log}`)), WAIT);
    const take = (chunk) => {
      log += chunk;
      const m = /listening on http:\/\/(127\.0\.0\.1:\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    };
    child.stdout.setEncoding('utf8').on('data', take);
    child.stderr.setEncoding('utf8').on('data', take);
    child.on('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`broker exited (${code}) before listening:\n${log}`));
    });
  });
  const http = `http://${addr}`;
  const api = async (method, path, body) => {
    const res = await fetch(http + path, {
      method,
      headers: { authorization: `Bearer ${apiKey}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  return {
    child,
    port: Number(addr.split(':')[1]),
    http,
    ws: `ws://${addr}/ws`,
    secrets: { apiKey, jwtSecret },
    log: () => log,
    api,
    publish: (channel, data) => api('POST', '/api/publish', { channel, data }),
    /** SIGKILL (a crash) or SIGTERM (a shutdown); resolves once the process is gone. */
    async stop(signal = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await gone;
    },
  };
}

const TYPES = { '.js': 'text/javascript', '.html': 'text/html', '.map': 'application/json', '.css': 'text/css' };

/**
 * The page server: `/dist/*` (the built package), `/demo/*` (clients/demo), `/page/<name>`
 * (HTML registered with `pages`), `/stellwerk/token` and `/token?user=` (tokens from
 * `claims`, as Stud.IP would mint them for the logged-in user), `/dispatch.php/jsupdater/get`
 * (counts polls, answers `polled`).
 */
export async function startPageServer() {
  const state = {
    secret: '',
    claims: {}, // user → claims (without exp)
    ttl: 3600, // seconds
    tokenCalls: {}, // user → count
    tokenHook: undefined, // (user, n) => token | undefined
    defaultUser: '',
    polls: 0,
    polled: {},
    pages: {},
  };
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-cache' });
      res.end(body);
    };
    if (url.pathname === '/token' || url.pathname === '/stellwerk/token') {
      const user = url.searchParams.get('user') ?? state.defaultUser;
      const n = (state.tokenCalls[user] = (state.tokenCalls[user] ?? 0) + 1);
      const hooked = state.tokenHook?.(user, n);
      const claims = state.claims[user];
      if (!claims) return send(404, 'text/plain', 'no such user');
      const ttl = Number(url.searchParams.get('ttl') ?? state.ttl);
      return send(200, 'text/plain', hooked ?? mintToken(state.secret, { sub: user, ...claims, exp: nowSecs() + ttl }));
    }
    if (url.pathname === '/dispatch.php/jsupdater/get') {
      state.polls++;
      return send(200, 'application/json', JSON.stringify(state.polled));
    }
    if (url.pathname.startsWith('/page/')) {
      const html = state.pages[url.pathname.slice(6)];
      return html === undefined ? send(404, 'text/plain', 'no page') : send(200, 'text/html', html);
    }
    for (const [prefix, dir] of [
      ['/dist/', join(pkg, 'dist')],
      ['/js/dist/', join(pkg, 'dist')], // what clients/demo/index.html loads, relative to itself
      ['/demo/', join(repo, 'clients/demo')],
    ]) {
      if (url.pathname.startsWith(prefix)) {
        const file = normalize(join(dir, url.pathname.slice(prefix.length) || 'index.html'));
        if (!file.startsWith(dir) || !existsSync(file)) return send(404, 'text/plain', 'not found');
        return send(200, TYPES[extname(file)] ?? 'application/octet-stream', readFileSync(file));
      }
    }
    send(404, 'text/plain', 'not found');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return { state, origin, close: () => new Promise((r) => server.close(r)) };
}

/** A test page that loads the IIFE bundle (and optionally runs `head` before it). */
export function testPage({ head = '', bundle = 'stellwerk.js', body = '' } = {}) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>test</title>${head}
<script src="/dist/${bundle}"></script></head><body>${body}
<script>
window.log = [];
window.note = (kind, value) => window.log.push({ kind, value: JSON.parse(JSON.stringify(value ?? null)) });
// A client for user \`user\` (tokens from the page server, as from Stud.IP) on \`channels\`,
// logging every event.
window.start = (url, user, channels, opts = {}) => {
  const sw = (window.sw = new Stellwerk(url, {
    getToken: () => fetch('/token?user=' + user).then((r) => r.text()),
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    ...opts,
  }));
  for (const e of ['connecting', 'connected', 'disconnected', 'error']) sw.on(e, (v) => note(e, v));
  window.subs = {};
  for (const c of channels) {
    subs[c] = sw.subscribe(c, {
      onMessage: (data, meta) => note('message', { data, meta }),
      onJoin: (i) => note('join', { channel: c, ...i }),
      onLeave: (i) => note('leave', { channel: c, ...i }),
      onSubscribed: (x) => note('subscribed', { channel: c, ...x }),
      onUnrecovered: () => note('unrecovered', c),
      onUnsubscribed: (reason) => note('unsubscribed', { channel: c, reason }),
      onError: (e) => note('suberror', { channel: c, code: e.code, message: e.message }),
      recover: true,
    });
  }
  sw.connect();
};
</script></body></html>`;
}

export async function launch() {
  // Playwright turns the back/forward cache off by default; the bfcache test needs it.
  return chromium.launch({ executablePath: CHROMIUM, ignoreDefaultArgs: ['--disable-back-forward-cache'] });
}

/** Waits (bounded) until `page.evaluate(fn, arg)` is truthy, and returns it. */
export async function until(page, fn, arg, what = 'condition') {
  const handle = await page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 }).catch(async (e) => {
    const log = await page.evaluate(() => JSON.stringify(window.log ?? null)).catch(() => '?');
    throw new Error(`timed out waiting for ${what}; page log: ${log}\n${e.message}`);
  });
  return handle.jsonValue();
}

/** Entries of the page's log of one kind. */
export const logged = (page, kind) => page.evaluate((k) => window.log.filter((e) => e.kind === k).map((e) => e.value), kind);

/** A 32-hex Stud.IP id. */
export const studipId = () => hex(16);

/**
 * One test's world: broker, page server, browser. `setup.broker` env extras; the page
 * server's origin is the only one the broker allows.
 */
export async function world({ env = {} } = {}) {
  const pages = await startPageServer();
  const broker = await startBroker({ env: { STELLWERK_ALLOWED_ORIGINS: pages.origin, ...env } });
  pages.state.secret = broker.secrets.jwtSecret;
  const browser = await launch();
  const w = {
    pages,
    broker,
    browser,
    async restartBroker() {
      await w.broker.stop('SIGKILL');
      w.broker = await startBroker({
        port: w.broker.port,
        secrets: w.broker.secrets,
        env: { STELLWERK_ALLOWED_ORIGINS: pages.origin, ...env },
      });
    },
    async close() {
      await browser.close().catch(() => undefined);
      await w.broker.stop('SIGKILL');
      await pages.close();
    },
  };
  return w;
}
