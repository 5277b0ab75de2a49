import { docKey, type PendingEntry } from './documents.js';
import type { MetaWrite } from './meta-store.js';

export const pendingId = (key: string) => `pending|${key}`;

/**
 * The pending-event log in memory, mirrored in the meta store. Entries are
 * ordered by key (a hybrid logical clock, so later writes sort later); per
 * document, sent entries come first and at most one unsent entry follows.
 * Mutations return the meta writes that make them durable, so a caller can
 * persist them together with related state in one storage call.
 */
export class PendingLog {
  private readonly entries = new Map<string, PendingEntry>();
  private readonly byDocument = new Map<string, PendingEntry[]>();
  private lastMillis = 0;
  private counter = 0;

  /**
   * Every entry with a key up to this one counts as sent. Marking a batch
   * sent is one write of this watermark (in the state document), not a
   * rewrite of each entry.
   */
  private sentKey = '';

  constructor(loaded: Iterable<PendingEntry> = [], sentThrough = '') {
    this.sentKey = sentThrough;
    for (const entry of [...loaded].sort((a, b) => (a.key < b.key ? -1 : 1))) {
      this.insert(entry.key <= sentThrough ? { ...entry, sent: true } : entry);
    }
    const last = [...this.entries.keys()].pop() ?? '';
    const latest = last > sentThrough ? last : sentThrough;
    if (latest) {
      // Both parts: a clock that reads the same or an earlier millisecond after a restart must not reuse a key.
      this.lastMillis = Number(latest.slice(0, 15));
      this.counter = Number(latest.slice(16));
    }
  }

  get sentThrough(): string {
    return this.sentKey;
  }

  /**
   * A key later than every key in the log, also across restarts. Kept apart
   * from the hybrid logical clock: logging order must not move event clocks.
   */
  nextKey(): string {
    const now = Date.now();
    if (now > this.lastMillis) {
      this.lastMillis = now;
      this.counter = 0;
    } else {
      this.counter++;
    }
    return `${String(this.lastMillis).padStart(15, '0')}-${String(this.counter).padStart(9, '0')}`;
  }

  get size(): number {
    return this.entries.size;
  }

  forDocument(collection: string, documentId: string): readonly PendingEntry[] {
    return this.byDocument.get(docKey(collection, documentId)) ?? [];
  }

  /**
   * The oldest entries, up to `limit` of them and `maxBytes` of JSON (at least
   * one entry), skipping those for which `skip` says so.
   */
  head(limit: number, skip?: (entry: PendingEntry) => boolean, maxBytes = Number.POSITIVE_INFINITY): PendingEntry[] {
    const result: PendingEntry[] = [];
    let bytes = 0;
    for (const entry of this.entries.values()) {
      if (result.length >= limit) break;
      if (skip?.(entry)) continue;
      if (maxBytes !== Number.POSITIVE_INFINITY) {
        bytes += JSON.stringify(entry.event).length;
        if (bytes > maxBytes && result.length > 0) break;
      }
      result.push(entry);
    }
    return result;
  }

  all(): PendingEntry[] {
    return [...this.entries.values()];
  }

  add(entry: PendingEntry): MetaWrite {
    this.insert(entry);
    return this.toWrite(entry);
  }

  /** Replaces an unsent entry's event in place; it keeps its place in the log. */
  update(entry: PendingEntry, event: PendingEntry['event']): MetaWrite {
    entry.event = event;
    return this.toWrite(entry);
  }

  /**
   * Marks the entries sent and moves the watermark past them. Returns true
   * when the watermark moved and must be persisted before the entries leave.
   * Entries the batch skipped (held back by a conflict) below the watermark
   * count as sent too: they are frozen, never rewritten, which only costs
   * them the collapsing of later writes.
   */
  markSent(entries: readonly PendingEntry[]): boolean {
    // Every entry up to the watermark is sent already, and new keys always sort after it.
    const last = entries.reduce((top, entry) => (entry.key > top ? entry.key : top), this.sentKey);
    if (last === this.sentKey) return false;
    this.sentKey = last;
    for (const entry of this.entries.values()) {
      if (entry.key > last) break;
      entry.sent = true;
    }
    return true;
  }

  remove(entry: PendingEntry): MetaWrite {
    this.entries.delete(entry.key);
    const key = docKey(entry.event.collection, entry.event.documentId);
    const list = (this.byDocument.get(key) ?? []).filter((other) => other !== entry);
    if (list.length > 0) this.byDocument.set(key, list);
    else this.byDocument.delete(key);
    return { id: pendingId(entry.key), kind: 'pending' };
  }

  removeDocument(collection: string, documentId: string): MetaWrite[] {
    return [...this.forDocument(collection, documentId)].map((entry) => this.remove(entry));
  }

  clear(filter: (entry: PendingEntry) => boolean = () => true): MetaWrite[] {
    return this.all().filter(filter).map((entry) => this.remove(entry));
  }

  private insert(entry: PendingEntry): void {
    this.entries.set(entry.key, entry);
    const key = docKey(entry.event.collection, entry.event.documentId);
    const list = this.byDocument.get(key);
    if (list) list.push(entry);
    else this.byDocument.set(key, [entry]);
  }

  private toWrite(entry: PendingEntry): MetaWrite {
    return { id: pendingId(entry.key), kind: 'pending', value: { key: entry.key, event: entry.event, sent: entry.sent } };
  }
}
