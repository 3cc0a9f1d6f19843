#!/usr/bin/env node
// Measures the two JavaScript toolchains against the real hooks of the `blubber` example:
// component size, build time, the broker's cold load (compile + instantiate + describe) and
// the broker's own per-call wall time of `authorize-subscribe` and `on-publish`
// (`stellwerk_plugin_call_duration_seconds` sum/count in /metrics), next to the Rust `course`
// plugin's.
//
//   (cd plugin-sdk/js && npm install --no-save @bytecodealliance/componentize-js@0.23.0)
//   cargo xtask build-plugins
//   STELLWERK_BIN=target/release/stellwerk node plugin-sdk/js/bench/backends.mjs
//
// Loopback only; every loop is bounded (CALLS requests per hook).
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, copyFileSync, writeFileSync, statSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { bundle, componentize, WIT_DIR, WORLD } from '../src/build.js';

const CALLS = Number(process.env.CALLS ?? 2000);
const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const bin = path.resolve(process.env.STELLWERK_BIN ?? path.join(root, 'target/release/stellwerk'));
const THREAD = 'blubber:0123456789abcdef0123456789abcdef';
const COURSE = 'a07535cf2f8a72df33c12ddfa4b53dde';

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function token(secret, claims) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ iat: now, exp: now + 3600, ...claims });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

async function buildVariants() {
  const source = await bundle(path.join(root, 'plugins/blubber/plugin.js'));
  const out = {};
  let t = performance.now();
  out.qjs = { bytes: await componentize(source), buildSeconds: 0 };
  out.qjs.buildSeconds = (performance.now() - t) / 1000;
  try {
    // COMPONENTIZE_JS: a componentize-js package directory installed elsewhere (optional).
    const where = process.env.COMPONENTIZE_JS
      ? pathToFileURL(path.join(process.env.COMPONENTIZE_JS, 'src/componentize.js')).href
      : '@bytecodealliance/componentize-js';
    const { componentize: sm } = await import(where);
    t = performance.now();
    const { component } = await sm(source, {
      witPath: WIT_DIR,
      worldName: WORLD,
      disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
    });
    out.starlingmonkey = { bytes: Buffer.from(component), buildSeconds: (performance.now() - t) / 1000 };
  } catch (e) {
    console.error(`componentize-js not measured (${e.message.split('\n')[0]}); install it as shown at the top`);
  }
  return out;
}

async function serve(dir) {
  const secret = randomBytes(24).toString('hex');
  const started = performance.now();
  const child = spawn(bin, ['serve'], {
    env: {
      // The broker refuses unknown STELLWERK_* variables (STELLWERK_BIN is ours).
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('STELLWERK_'))),
      STELLWERK_LISTEN: '127.0.0.1:0',
      STELLWERK_PLUGINS_DIR: dir,
      STELLWERK_JWT_SECRET: secret,
      STELLWERK_API_KEY: 'bench-key',
      STELLWERK_ADMIN_TOKEN: 'bench-admin',
      STELLWERK_RATE_LIMITS_API_PUBLISHES_PER_SECOND: '0',
      NO_COLOR: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line in 60 s:\n${log}`)), 60_000);
    for (const stream of [child.stdout, child.stderr]) {
      stream.on('data', (chunk) => {
        log += chunk;
        const m = log.match(/listening on http:\/\/(127\.0\.0\.1:\d+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
    }
    child.on('exit', (code) => reject(new Error(`broker exited ${code}:\n${log}`)));
  });
  return { child, addr, secret, startSeconds: (performance.now() - started) / 1000 };
}

async function perCall(addr, plugin, hook) {
  const text = await (await fetch(`http://${addr}/metrics`, { headers: { authorization: 'Bearer bench-admin' } })).text();
  const value = (suffix) =>
    Number(text.split('\n').find((l) => l.startsWith(`stellwerk_plugin_call_duration_seconds_${suffix}{plugin="${plugin}",hook="${hook}"}`))?.split(' ')[1]);
  return { calls: value('count'), micros: (value('sum') / value('count')) * 1e6 };
}

async function drive(server, plugin, channel, claims) {
  const { addr, secret } = server;
  const jwt = token(secret, { sub: 'e7a0a84b161f3e8c09b4a0a2e8a58147', ...claims });
  for (let i = 0; i < CALLS; i++) {
    const ctl = new AbortController();
    const resp = await fetch(`http://${addr}/sse?channel=${channel}&token=${jwt}`, { signal: ctl.signal });
    if (resp.status !== 200) throw new Error(`subscribe ${channel}: ${resp.status} ${await resp.text()}`);
    ctl.abort();
  }
  for (let i = 0; i < CALLS; i++) {
    const resp = await fetch(`http://${addr}/api/publish`, {
      method: 'POST',
      headers: { authorization: 'Bearer bench-key', 'content-type': 'application/json' },
      body: JSON.stringify({ channel, data: { type: 'blubber.comment.created', i } }),
    });
    if (resp.status !== 200) throw new Error(`publish ${channel}: ${resp.status} ${await resp.text()}`);
  }
  return {
    authorizeSubscribe: await perCall(addr, plugin, 'authorize-subscribe'),
    onPublish: await perCall(addr, plugin, 'on-publish'),
  };
}

const variants = await buildVariants();
const rows = [];
for (const [backend, { bytes, buildSeconds }] of Object.entries(variants)) {
  const dir = mkdtempSync(path.join(tmpdir(), 'stellwerk-bench-js-'));
  writeFileSync(path.join(dir, 'blubber.wasm'), bytes);
  const server = await serve(dir);
  try {
    const calls = await drive(server, 'blubber', THREAD, { channels: [THREAD] });
    rows.push({ plugin: `blubber (JavaScript, ${backend})`, kib: bytes.length / 1024, buildSeconds, startSeconds: server.startSeconds, ...calls });
  } finally {
    server.child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}
{
  const dir = mkdtempSync(path.join(tmpdir(), 'stellwerk-bench-rust-'));
  const course = path.join(root, 'target/plugins/course.wasm');
  copyFileSync(course, path.join(dir, 'course.wasm'));
  const server = await serve(dir);
  try {
    const calls = await drive(server, 'course', `course:${COURSE}:chat`, { perm: 'autor', courses: { [COURSE]: 'autor' } });
    rows.push({ plugin: 'course (Rust)', kib: statSync(course).size / 1024, buildSeconds: NaN, startSeconds: server.startSeconds, ...calls });
  } finally {
    server.child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(`| plugin | component | build | broker start (cold compile) | authorize-subscribe per call | on-publish per call |`);
console.log(`|---|---|---|---|---|---|`);
for (const r of rows) {
  console.log(
    `| ${r.plugin} | ${r.kib.toFixed(0)} KiB | ${Number.isNaN(r.buildSeconds) ? '–' : `${r.buildSeconds.toFixed(1)} s`} | ${r.startSeconds.toFixed(2)} s | ${r.authorizeSubscribe.micros.toFixed(1)} µs (${r.authorizeSubscribe.calls} calls) | ${r.onPublish.micros.toFixed(1)} µs (${r.onPublish.calls} calls) |`,
  );
}
