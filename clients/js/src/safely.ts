/**
 * Calls an application callback so that its exception neither breaks the client's own
 * bookkeeping nor disappears: it is rethrown on its own task, where the console shows it.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function safely<A extends unknown[]>(fn: ((...args: A) => unknown) | undefined, ...args: A): void {
  if (!fn) return;
  try {
    fn(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
}
