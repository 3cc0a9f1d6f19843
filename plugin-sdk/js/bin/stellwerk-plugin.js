#!/usr/bin/env node
// stellwerk-plugin: scaffold and build Stellwerk channel plugins written in JavaScript.
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, BuildError } from '../src/build.js';

const USAGE = `usage: stellwerk-plugin <command> [args…]

commands:
  init <dir> [--namespace NS]   scaffold a plugin in <dir> (package.json, plugin.js,
                                test/plugin.test.js); its name and namespace default to
                                the directory's name
  build [dir] [--out-dir DIR]   check the plugin in <dir> (default: .) and build it into
                                DIR/<name>.wasm (default DIR: <dir>/dist); prints its path`;

const sdkDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function parse(args, flags) {
  const positional = [];
  const options = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const [flag, inline] = arg.split(/=(.*)/s, 2);
    if (flags.includes(flag)) {
      const value = inline ?? args[++i];
      if (value === undefined) throw new BuildError(`${flag} needs a value`);
      options[flag.slice(2)] = value;
    } else if (arg.startsWith('-')) {
      throw new BuildError(`unknown option \`${arg}\``);
    } else {
      positional.push(arg);
    }
  }
  return { positional, options };
}

async function init(args) {
  const { positional, options } = parse(args, ['--namespace']);
  if (positional.length !== 1) throw new BuildError('init needs one directory');
  const dir = path.resolve(positional[0]);
  const name = path.basename(dir);
  const namespace = options.namespace ?? name.toLowerCase().replace(/[^a-z0-9_-]/g, '-');
  if (!/^[a-z0-9_-]{1,64}$/.test(namespace)) throw new BuildError(`namespace ${JSON.stringify(namespace)} does not match [a-z0-9_-]{1,64}`);
  if (existsSync(path.join(dir, 'package.json'))) throw new BuildError(`${dir} already has a package.json`);
  let sdk = path.relative(dir, sdkDir) || '.';
  if (!sdk.startsWith('.')) sdk = `./${sdk}`;
  const fill = (text) => text.replaceAll('{{name}}', name).replaceAll('{{namespace}}', namespace).replaceAll('{{sdk}}', sdk);
  const files = [
    ['package.json', 'package.json.tmpl'],
    ['plugin.js', 'plugin.js.tmpl'],
    ['test/plugin.test.js', 'plugin.test.js.tmpl'],
    ['.gitignore', 'gitignore.tmpl'],
  ];
  for (const [dest, template] of files) {
    const text = await readFile(path.join(sdkDir, 'templates', template), 'utf8');
    await mkdir(path.dirname(path.join(dir, dest)), { recursive: true });
    await writeFile(path.join(dir, dest), fill(text));
    console.log(`created ${path.join(positional[0], dest)}`);
  }
  console.log(`\nnext: cd ${positional[0]} && npm install && npm test && npx stellwerk-plugin build`);
}

async function buildCommand(args) {
  const { positional, options } = parse(args, ['--out-dir']);
  if (positional.length > 1) throw new BuildError('build builds one plugin directory');
  const built = await build(path.resolve(positional[0] ?? '.'), { outDir: options['out-dir'] });
  console.error(
    `stellwerk-plugin: built plugin \`${built.name}\` (${(built.bytes / 1024).toFixed(1)} KiB) in ${built.seconds.toFixed(1)} s (JavaScript, QuickJS)`,
  );
  console.log(built.path);
}

const [command, ...rest] = process.argv.slice(2);
try {
  switch (command) {
    case 'init':
      await init(rest);
      break;
    case 'build':
      await buildCommand(rest);
      break;
    case undefined:
    case 'help':
    case '-h':
    case '--help':
      console.log(USAGE);
      break;
    default:
      throw new BuildError(`unknown command \`${command}\`\n\n${USAGE}`);
  }
} catch (e) {
  console.error(`stellwerk-plugin: error: ${e instanceof BuildError ? e.message : e.stack}`);
  process.exitCode = 1;
}
