// `stellwerk-plugin build`: a JavaScript plugin (a directory with `package.json` and the
// module its `main` names, `plugin.js` by default) → `<out dir>/<name>.wasm`, a WebAssembly
// component of the world `stellwerk:plugin/channel-plugin@1.0.0`.
//
// 1. The module is loaded in Node.js and checked as the broker would check it: it exports
//    `describe`, its hooks are functions, its description is valid. A module that fails is
//    refused here, with the reason, instead of producing a component the broker refuses later.
// 2. A generated entry wires the module to the SDK's ABI adapter and the host imports, and
//    rolldown bundles it with the SDK into one ES module (no other imports allowed).
// 3. componentize-qjs embeds it in QuickJS (synchronous runtime, WASI stubbed out: the broker
//    offers no WASI) and snapshots the initialised engine with Wizer.

import { mkdtemp, readFile, rename, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as abi from './abi.js';
import * as testing from './testing.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The WIT world, the single source of truth (`plugin-sdk/wit`). */
export const WIT_DIR = path.resolve(here, '..', '..', 'wit');
export const WORLD = 'channel-plugin';

const COMPONENT_HEADER = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);

export class BuildError extends Error {}

/** Reads `<dir>/package.json`: the plugin's name (the `.wasm` file's) and its module. */
export async function readPlugin(dir) {
  const manifest = path.join(dir, 'package.json');
  let pkg;
  try {
    pkg = JSON.parse(await readFile(manifest, 'utf8'));
  } catch (e) {
    throw new BuildError(`${manifest}: ${e.code === 'ENOENT' ? 'not found (is this a JavaScript plugin directory?)' : e.message}`);
  }
  const name = String(pkg.name ?? '').replace(/^@[^/]+\//, '');
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) {
    throw new BuildError(`${manifest}: "name" must be 1 to 64 characters of A-Z a-z 0-9 _ - . (it names the .wasm file); got ${JSON.stringify(pkg.name)}`);
  }
  const main = path.resolve(dir, pkg.main ?? 'plugin.js');
  return { name, main, version: pkg.version };
}

/**
 * Loads the module in Node.js and refuses what the broker would refuse. Returns the
 * plugin's description.
 */
export async function check(main) {
  let plugin;
  try {
    plugin = await import(pathToFileURL(main).href);
  } catch (e) {
    throw new BuildError(`cannot load ${main}: ${e.stack || e}`);
  }
  const reason = abi.problem(plugin);
  if (reason) throw new BuildError(`${main}: ${reason}`);
  try {
    return testing.describe(plugin);
  } catch (e) {
    throw new BuildError(`${main}: describe(): ${e.message}`);
  }
}

/** The single ES module that becomes the component. */
export async function bundle(main) {
  const { rolldown } = await import('rolldown');
  const work = await mkdtemp(path.join(tmpdir(), 'stellwerk-plugin-'));
  try {
    const entry = path.join(work, 'entry.js');
    const url = (file) => JSON.stringify(pathToFileURL(file).pathname);
    await writeFile(
      entry,
      [
        `import wit from 'stellwerk:plugin/host@1.0.0';`,
        `import { __setHost } from ${url(path.join(here, 'host.js'))};`,
        `import { exportsFor } from ${url(path.join(here, 'abi.js'))};`,
        `import * as plugin from ${url(main)};`,
        `__setHost(wit);`,
        `const hooks = exportsFor(plugin);`,
        `export function describe() { return hooks.describe(); }`,
        `export function authorizeSubscribe(request) { return hooks.authorizeSubscribe(request); }`,
        `export function onPublish(request) { return hooks.onPublish(request); }`,
        `export function filter(request) { return hooks.filter(request); }`,
        '',
      ].join('\n'),
    );
    const build = await rolldown({
      input: entry,
      platform: 'neutral',
      resolve: { mainFields: ['module', 'main'], conditionNames: ['import', 'default'] },
      external: [/^stellwerk:/],
      logLevel: 'warn',
      onwarn(warning, warn) {
        if (warning.code === 'UNRESOLVED_IMPORT') {
          throw new BuildError(`${warning.message}: a plugin runs without Node.js, files or network; it may import stellwerk-plugin-sdk and plain JavaScript modules only`);
        }
        warn(warning);
      },
    });
    const { output } = await build.generate({ format: 'esm' });
    await build.close();
    return output[0].code;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Component bytes for the bundled module `source`. */
export async function componentize(source) {
  const { componentize: qjs } = await import('componentize-qjs');
  const { component } = await qjs({
    witPath: WIT_DIR,
    jsSource: source,
    world: WORLD,
    // The broker offers no WASI and no component-model async.
    stubWasi: true,
    sync: true,
  });
  const bytes = Buffer.from(component);
  if (!bytes.subarray(0, 8).equals(COMPONENT_HEADER)) {
    throw new BuildError('componentize-qjs did not produce a WebAssembly component');
  }
  return bytes;
}

/**
 * Builds the plugin in `dir` into `<outDir>/<name>.wasm` (written next to it and renamed, so
 * a watching broker never loads half a file). Returns what was built.
 */
export async function build(dir, { outDir } = {}) {
  const started = process.hrtime.bigint();
  const { name, main } = await readPlugin(dir);
  const description = await check(main);
  const source = await bundle(main);
  const bytes = await componentize(source);
  const out = path.resolve(outDir ?? path.join(dir, 'dist'));
  await mkdir(out, { recursive: true });
  const dest = path.join(out, `${name}.wasm`);
  const tmp = path.join(out, `.${name}.wasm.tmp`);
  await writeFile(tmp, bytes);
  await rename(tmp, dest);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { name, path: dest, bytes: bytes.length, seconds, description };
}
