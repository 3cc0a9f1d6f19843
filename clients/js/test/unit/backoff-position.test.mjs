// Backoff with full jitter, and the recovery bookkeeping of one subscription.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoff, Position } from '../../dist/index.js';

test('backoff: the window doubles from min up to max, the delay is drawn from all of it', () => {
  const top = (attempt) => backoff(attempt, 1000, 20000, () => 0.999999);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10, 100].map(top), [999, 1999, 3999, 7999, 15999, 19999, 19999, 19999, 19999]);
  // Full jitter: the low end of the window is 0, not min, so a herd spreads over all of it.
  assert.equal(backoff(5, 1000, 20000, () => 0), 0);
  assert.equal(backoff(2, 1000, 20000, () => 0.5), 2000);
});

test('backoff: many clients reconnecting at once are spread over the window', () => {
  const delays = Array.from({ length: 2000 }, () => backoff(3, 1000, 20000));
  assert.ok(delays.every((d) => d >= 0 && d < 8000));
  // Bounded in count, no timing: the draws fill every eighth of the window.
  const buckets = new Set(delays.map((d) => Math.floor(d / 1000)));
  assert.equal(buckets.size, 8);
});

test('position: first subscribe takes the reply position; messages move it; duplicates are dropped', () => {
  const p = new Position();
  assert.equal(p.recover(), undefined, 'nothing to recover before the first subscribe');
  assert.equal(p.subscribed('e1', 12), true);
  assert.deepEqual(p.recover(), { epoch: 'e1', offset: 12 });
  assert.equal(p.accept('e1', 13), true);
  assert.equal(p.accept('e1', 13), false, 'the same offset twice');
  assert.equal(p.accept('e1', 11), false, 'an older offset');
  assert.equal(p.accept('e1', 14), true);
  assert.deepEqual(p.recover(), { epoch: 'e1', offset: 14 });
});

test('position: recovered: true keeps the position so that the replayed messages are delivered', () => {
  const p = new Position();
  p.subscribed('e1', 0);
  p.accept('e1', 1);
  // Reconnect: the broker answers with the channel's latest offset (4), then replays 2..4.
  assert.equal(p.subscribed('e1', 4, true), true);
  assert.deepEqual([2, 3, 4].map((o) => p.accept('e1', o)), [true, true, true]);
  assert.equal(p.accept('e1', 4), false);
});

test('position: recovered: false is a gap; the position jumps to the reply', () => {
  const p = new Position();
  p.subscribed('e1', 5);
  assert.equal(p.subscribed('e2', 0, false), false);
  assert.deepEqual(p.recover(), { epoch: 'e2', offset: 0 });
  assert.equal(p.accept('e2', 1), true);
});

test('position: a plain resubscribe is continuous only when the channel did not move', () => {
  const p = new Position();
  p.subscribed('e1', 3);
  assert.equal(p.subscribed('e1', 3), true, 'same epoch and offset: nothing missed');
  assert.equal(p.subscribed('e1', 5), false, 'two messages went by');
  assert.equal(p.subscribed('e2', 5), false, 'another epoch');
});
