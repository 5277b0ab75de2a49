/**
 * The live fan-out: accepted pushes go out to the subscribers after the push
 * is acknowledged (invariant 12), server-wide, in push order, in batches.
 */
import { broadcast, type LivePush } from './handlers.js';
import type { Logger } from './logger.js';

export class LiveFanOut<User = unknown> {
  /** The fan-outs, one after another; pushes are acknowledged without waiting for theirs. */
  private running: Promise<void> = Promise.resolve();
  /** Accepted pushes waiting for the next fan-out. */
  private pushes: LivePush<User>[] = [];
  private scheduled = false;
  private stopped = false;

  constructor(
    /** Events one fan-out sends at most (a push's worth); what came beyond goes in the next, so no live message outgrows a push. */
    private readonly maxEvents: number,
    private readonly logger: Logger,
  ) {}

  /**
   * Queues a push's accepted events for the live fan-out. The fan-out runs
   * at the end of the turn (pushes served in the same turn go out together),
   * or after the one still running, which meanwhile gathers what comes: under
   * a stream of writes a subscriber gets a message per batch, not per write.
   */
  add(push: LivePush<User>): void {
    this.pushes.push(push);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.drain());
  }

  /** Drops what waits (nobody is left to receive it) and resolves when the fan-out under way has ended. */
  stop(): Promise<void> {
    this.stopped = true;
    this.pushes = [];
    return this.running;
  }

  private drain(): void {
    this.running = this.running
      .then(() => {
        this.scheduled = false;
        if (this.stopped) return;
        // At least one push, and pushes up to a push's worth of events: the rest goes next.
        let events = 0;
        let count = 0;
        while (count < this.pushes.length && (count === 0 || events + this.pushes[count]!.events.length <= this.maxEvents)) {
          events += this.pushes[count]!.events.length;
          count++;
        }
        const batch = this.pushes.splice(0, count);
        if (this.pushes.length > 0 && !this.scheduled) {
          this.scheduled = true;
          setImmediate(() => this.drain());
        }
        return broadcast(batch);
      })
      .catch((error: unknown) => this.logger.error({ err: error }, 'live fan-out failed'));
  }
}
