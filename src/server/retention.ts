/**
 * Scheduled compaction. Pulls are served from document heads, so removing
 * superseded events never leaves a client a gap; retention only bounds how
 * much history (for audit and replay) the storage keeps beyond the heads.
 */
import { z } from 'zod';
import type { Logger } from '../shared/logger.js';
import { sweepBlobs } from './blobs/sweep.js';
import type { BlobStore } from './blobs/types.js';
import type { SyncStorage } from './storage/types.js';

export const retentionOptionsSchema = z.strictObject({
  /** Keep at least the newest N events; older superseded events are removed. */
  maxEvents: z.number().int().positive().optional(),
  /** Keep superseded events for at least this many milliseconds. */
  maxAgeMs: z.number().int().positive().optional(),
  /** How often compaction runs. */
  intervalMs: z.number().int().positive().default(60_000),
});
export type RetentionOptions = z.input<typeof retentionOptionsSchema>;

/** Remembers which sequence was latest when, so an age becomes a sequence cutoff without a time index in storage. */
export class Retention {
  private readonly marks: { at: number; seq: number }[] = [];
  private timer?: ReturnType<typeof setInterval>;

  constructor(
    private readonly storage: SyncStorage,
    private readonly options: z.output<typeof retentionOptionsSchema>,
    private readonly logger: Logger,
    /** Attachment content, swept after each compaction of the events that named it. */
    private readonly blobs?: BlobStore,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      this.run().catch((error: unknown) => this.logger.error({ err: error }, 'compaction failed'));
    }, this.options.intervalMs);
    this.timer.unref?.();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One compaction pass; returns how many events it removed. */
  async run(): Promise<number> {
    const latest = await this.storage.getLatestSequence();
    const now = this.now();
    this.marks.push({ at: now, seq: latest });
    const cutoffs: number[] = [];
    if (this.options.maxEvents !== undefined) cutoffs.push(latest - this.options.maxEvents + 1);
    if (this.options.maxAgeMs !== undefined) {
      // The newest mark old enough: everything at or below its sequence is older than maxAgeMs.
      const old = this.marks.filter((mark) => mark.at <= now - this.options.maxAgeMs!);
      cutoffs.push(old.length > 0 ? old[old.length - 1]!.seq + 1 : 0);
      this.marks.splice(0, Math.max(0, old.length - 1));
    }
    const cutoff = cutoffs.length > 0 ? Math.min(...cutoffs) : 0;
    if (cutoff <= 1) return 0;
    const removed = await this.storage.clearEventsBefore(cutoff);
    if (removed > 0) this.logger.info({ removed, before: cutoff }, 'compacted superseded events');
    if (this.blobs) {
      const swept = await sweepBlobs(this.storage, this.blobs, undefined, now);
      if (swept.blobs + swept.uploads > 0) this.logger.info(swept, 'removed attachment content no event names');
    }
    return removed;
  }
}
