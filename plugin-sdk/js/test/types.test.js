// The TypeScript types are checked against the WIT world: every record field, variant case,
// enum case and export of plugin-sdk/wit/plugin.wit appears in types/wit.d.ts (in jco's
// camelCase), and every export of the world is implemented by the ABI adapter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { exportsFor } from '../src/abi.js';
import { Description, ChannelOptions } from '../src/index.js';

const wit = readFileSync(new URL('../../wit/plugin.wit', import.meta.url), 'utf8').replace(/\/\/.*$/gm, '');
const dts = readFileSync(new URL('../types/wit.d.ts', import.meta.url), 'utf8');
const camel = (name) => name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
const pascal = (name) => camel(name).replace(/^[a-z]/, (c) => c.toUpperCase());

function blocks(kind) {
  const found = [];
  const re = new RegExp(`${kind}\\s+([a-z-]+)\\s*\\{([^}]*)\\}`, 'g');
  for (const [, name, body] of wit.matchAll(re)) found.push({ name, body });
  return found;
}

test('every WIT record and its fields are typed', () => {
  const records = blocks('record');
  assert.ok(records.length >= 8);
  for (const { name, body } of records) {
    const decl = dts.match(new RegExp(`interface ${pascal(name)} \\{([^}]*)\\}`));
    assert.ok(decl, `record ${name} has no interface ${pascal(name)}`);
    for (const [, field] of body.matchAll(/([a-z-]+)\s*:/g)) {
      assert.match(decl[1], new RegExp(`\\b${camel(field)}:`), `${name}.${field}`);
    }
  }
});

test('every WIT variant and enum case is typed', () => {
  for (const kind of ['variant', 'enum']) {
    for (const { name, body } of blocks(kind)) {
      const decl = dts.match(new RegExp(`type ${pascal(name)} =([\\s\\S]*?)(?:\\n\\n|\\nexport)`));
      assert.ok(decl, `${kind} ${name} has no type ${pascal(name)}`);
      for (const [, item] of body.matchAll(/([a-z-]+)\s*(?:\(|,|$)/g)) {
        assert.match(decl[1], new RegExp(`'${item}'`), `${name}: ${item}`);
      }
    }
  }
});

test('every export and host import of the world is typed and implemented', () => {
  const exported = [...wit.matchAll(/export\s+([a-z-]+)\s*:\s*func/g)].map(([, n]) => camel(n));
  assert.deepEqual(exported, ['describe', 'authorizeSubscribe', 'onPublish', 'filter']);
  const impl = exportsFor({ describe: () => new Description('p', '1').namespace('p', new ChannelOptions()) });
  for (const name of exported) {
    assert.match(dts, new RegExp(`\\b${name}\\(`), name);
    assert.equal(typeof impl[name], 'function', name);
  }
  for (const [, name] of wit.matchAll(/([a-z-]+)\s*:\s*func\(/g)) {
    if (!exported.includes(camel(name))) assert.match(dts, new RegExp(`\\b${camel(name)}\\(`), name);
  }
});
