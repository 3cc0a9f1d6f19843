// Build: type-check and declarations (tsc), the ESM build (dist/index.js, dist/jsupdater.js)
// and the browser bundles (dist/stellwerk.js: global class `Stellwerk`;
// dist/stellwerk-jsupdater.js: the client plus the STUDIP.JSUpdater bridge). Measures the
// browser bundles minified and gzipped and fails above the budget.
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { createRequire } from 'node:module';
import * as esbuild from 'esbuild';

const BUDGET = 8 * 1024; // bytes, min+gzip, of dist/stellwerk.js
const here = new URL('.', import.meta.url);
process.chdir(here.pathname);
rmSync('dist', { recursive: true, force: true });

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { stdio: 'inherit' });

const common = { bundle: true, target: 'es2019', logLevel: 'warning', legalComments: 'none' };
await esbuild.build({
  ...common,
  entryPoints: { index: 'src/index.ts', jsupdater: 'src/jsupdater.ts' },
  outdir: 'dist',
  format: 'esm',
  splitting: true,
  sourcemap: true,
});
for (const [entry, out] of [
  ['src/browser.ts', 'dist/stellwerk.js'],
  ['src/jsupdater-browser.ts', 'dist/stellwerk-jsupdater.js'],
]) {
  await esbuild.build({ ...common, entryPoints: [entry], outfile: out, format: 'iife', minify: true, sourcemap: true });
}

let over = false;
for (const file of ['dist/stellwerk.js', 'dist/stellwerk-jsupdater.js']) {
  const code = readFileSync(file);
  const gz = gzipSync(code, { level: 9 }).length;
  console.log(`${file}: ${code.length} bytes minified, ${gz} bytes min+gzip (${(gz / 1024).toFixed(2)} KiB)`);
  if (file === 'dist/stellwerk.js' && gz > BUDGET) {
    console.error(`${file} is over the size budget of ${BUDGET} bytes min+gzip`);
    over = true;
  }
}
if (over) process.exit(1);
