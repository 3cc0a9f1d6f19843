/**
 * Reconnect delays: exponential backoff with full jitter.
 *
 * The delay before attempt `attempt` (0 for the first retry) is drawn uniformly from
 * `[0, min(max, min * 2^attempt))`. Drawing from the whole range ("full jitter") spreads the
 * tabs that lost their connection at the same moment (a broker restart) over the window, so
 * they do not arrive together; the window doubles until it reaches `max`.
 */
export function backoff(attempt: number, min: number, max: number, random: () => number = Math.random): number {
  const window = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * window);
}
