/**
 * Recovery bookkeeping of one subscription: the last position `(epoch, offset)` it has seen.
 *
 * Offsets grow by one per message within an epoch; a new epoch (a restarted in-memory broker,
 * a channel forgotten while idle) starts again, so positions are compared as pairs.
 */
export class Position {
  epoch: string | undefined = undefined;
  offset = 0;

  /** What to send as `recover`, once the subscription has seen a position. */
  recover(): { epoch: string; offset: number } | undefined {
    return this.epoch === undefined ? undefined : { epoch: this.epoch, offset: this.offset };
  }

  /**
   * Takes the answer to a (re)subscribe and tells whether the stream is continuous, i.e.
   * nothing can have been missed since the last position.
   *
   * - `recovered: true`: the missed messages follow the reply, so the position stays where it
   *   is (they move it forward one by one; moving it to the reply's offset would drop them as
   *   duplicates).
   * - `recovered: false`: a gap; the position jumps to the reply's.
   * - no `recovered` (a plain subscribe): continuous only on a first subscribe, or when the
   *   channel is still at the position seen last.
   */
  subscribed(epoch: string, offset: number, recovered?: boolean): boolean {
    const first = this.epoch === undefined;
    if (recovered === true && this.epoch === epoch) return true;
    const continuous = first || (recovered === undefined && epoch === this.epoch && offset === this.offset);
    this.epoch = epoch;
    this.offset = offset;
    return continuous;
  }

  /** Takes a message's position; false for one already seen (a duplicate), which is dropped. */
  accept(epoch: string, offset: number): boolean {
    if (epoch === this.epoch && offset <= this.offset) return false;
    this.epoch = epoch;
    this.offset = offset;
    return true;
  }
}
