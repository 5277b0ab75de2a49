/**
 * The model scoped reads are judged against, and a reader that pages through
 * them as the protocol's client does.
 */
import { expect } from 'vitest';
import { matchesScope, parseScope, type Scope, type ScopeSelector } from '../shared/scope.js';
import { documentBytes } from '../server/storage/size.js';
import type { IncomingEvent, ScopedPage, ScopedQuery, SyncStorage } from '../server/storage/types.js';
import { acceptedSeq, makeEvent, type Data, type Written } from './harness.js';

/** What a scoped page is compared by: each row's sequence, event id and whether it is a leave; the cut; where the checkpoint moves. */
export interface PageSummary {
  rows: [seq: number, id: string, leave: boolean][];
  cutByBytes: boolean;
  through: number;
}
export const summary = (page: ScopedPage): PageSummary => ({
  rows: page.map((change) => [change.seq, change.id, change.leave === true]),
  cutByBytes: page.cutByBytes ?? false,
  through: page.through,
});

/**
 * A history written through a storage and kept whole by the test, with what
 * compaction removed: the model scoped reads are judged against. Its rule is
 * the contract's, in plain JS over matchesScope (K the checkpoint, E the
 * scope, H and C what the reader held, L = max(K, C)):
 * - a head after K that matches E is sent unless it is at or below C and matches H;
 * - a head after L that does not match E is a leave when the reader may hold
 *   the document: some kept version x before the head, from its version at
 *   C (or its first) on, is no delete and matches E; or its versions up to
 *   C were compacted away (its oldest kept event has a base), unless L is 0
 *   (nothing held, nothing sent);
 * - in a catch-up from nothing (C is 0) that names its start S, a head at or
 *   before S is no leave.
 */
export class ScopedHistory {
  readonly written: Written[] = [];
  private readonly removed = new Set<number>();

  constructor(private readonly storage: SyncStorage) {}

  head(documentId: string, collection = 'todos'): Written | undefined {
    return this.written.findLast((w) => w.event.documentId === documentId && w.event.collection === collection);
  }

  /** Writes the next version of a document (an insert when it has none or was deleted); returns its sequence. */
  async write(documentId: string, data: Data, collection = 'todos', op?: IncomingEvent['op']): Promise<number> {
    const head = this.head(documentId, collection);
    const event = makeEvent({
      documentId,
      collection,
      data,
      base: head?.event.id ?? null,
      op: op ?? (head && head.event.op !== 'delete' ? 'update' : 'insert'),
    });
    const seq = acceptedSeq((await this.storage.saveEvents([event]))[0]);
    this.written.push({ seq, event });
    return seq;
  }

  async remove(documentId: string, collection = 'todos'): Promise<number> {
    return this.write(documentId, this.head(documentId, collection)!.event.data, collection, 'delete');
  }

  async compact(checkpoint: number): Promise<void> {
    await this.storage.clearEventsBefore(checkpoint);
    for (const w of this.written) {
      if (w.seq < checkpoint && this.head(w.event.documentId, w.event.collection) !== w) this.removed.add(w.seq);
    }
  }

  latest(): number {
    return this.written.at(-1)?.seq ?? 0;
  }

  idOf(documentId: string, collection = 'todos'): string {
    return this.head(documentId, collection)!.event.id;
  }

  /** Every row of a scoped read from `checkpoint`, unbounded. */
  rows(checkpoint: number, query: ScopedQuery): { seq: number; id: string; leave: boolean; bytes: number }[] {
    const heldThrough = query.held.through;
    const last = Math.max(checkpoint, heldThrough);
    const leavesAfter = heldThrough === 0 && query.start !== undefined ? Math.max(last, query.start) : last;
    const heads = new Map<string, Written>();
    const kept = new Map<string, Written[]>();
    for (const w of this.written) {
      if (w.event.collection !== query.collection) continue;
      heads.set(w.event.documentId, w);
      if (!this.removed.has(w.seq)) kept.set(w.event.documentId, [...(kept.get(w.event.documentId) ?? []), w]);
    }
    const mayHold = (versions: Written[], head: Written) => {
      const atHeld = versions.filter((x) => x.seq <= heldThrough).at(-1);
      if (!atHeld && versions[0]!.event.baseEventId !== null) return true;
      return versions.some((x) => x.seq >= (atHeld?.seq ?? 0) && x.seq < head.seq && x.event.op !== 'delete' && matchesScope(query.scope, x.event.data));
    };
    const rows = [];
    for (const h of [...heads.values()].sort((a, b) => a.seq - b.seq)) {
      if (h.seq <= checkpoint) continue;
      const { data } = h.event;
      if (matchesScope(query.scope, data)) {
        if (!(h.seq <= heldThrough && matchesScope(query.held.scope, data))) rows.push({ seq: h.seq, id: h.event.id, leave: false, bytes: documentBytes(data) });
      } else if (query.scope !== null && last > 0 && h.seq > leavesAfter && mayHold(kept.get(h.event.documentId)!, h)) {
        rows.push({ seq: h.seq, id: h.event.id, leave: true, bytes: 0 });
      }
    }
    return rows;
  }

  /** The page a scoped read from `checkpoint` must answer. */
  page(checkpoint: number, query: ScopedQuery): PageSummary {
    const limit = query.limit === undefined ? Number.POSITIVE_INFINITY : Math.ceil(query.limit);
    if (limit <= 0) return { rows: [], cutByBytes: false, through: checkpoint };
    const rows: PageSummary['rows'] = [];
    let bytes = 0;
    let cutByBytes = false;
    for (const row of this.rows(checkpoint, query)) {
      if (rows.length >= limit) break;
      if (!row.leave && query.maxBytes !== undefined) {
        bytes += row.bytes;
        if (bytes > query.maxBytes && rows.length > 0) {
          cutByBytes = true;
          break;
        }
      }
      rows.push([row.seq, row.id, row.leave]);
    }
    const through = cutByBytes || rows.length >= limit ? rows.at(-1)![0] : Math.max(checkpoint, this.latest());
    return { rows, cutByBytes, through };
  }
}

/** A scoped query on todos; `held` defaults to the scope itself, held through the checkpoint. */
export function scopedQuery(checkpoint: number, scope: ScopeSelector | null, fields: Partial<Omit<ScopedQuery, 'scope'>> = {}): ScopedQuery {
  const parsed = parseScope(scope);
  return { collection: 'todos', scope: parsed, held: { scope: parsed, through: checkpoint }, ...fields };
}

/**
 * A reader as the protocol has one: it applies each page (a change sets or
 * deletes the document, a leave drops it), moves its checkpoint to the
 * page's `through`, and holds its scope through the checkpoint once a page
 * ends the catch-up. On a scope change it drops what the new scope leaves
 * out and starts again from 0, holding the old scope at the old checkpoint.
 */
export class ScopedReader {
  readonly documents = new Map<string, Data>();
  private checkpoint = 0;
  private held: ScopedQuery['held'];
  /** The latest sequence when a catch-up from nothing began, as the server reads it before the first page. */
  private start?: number;

  constructor(
    private readonly storage: SyncStorage,
    public scope: Scope,
  ) {
    this.held = { scope, through: 0 };
  }

  /** Reads and applies one page; true when it ended the catch-up. */
  async page(limit?: number, maxBytes?: number): Promise<boolean> {
    if (this.held.through === 0 && this.checkpoint === 0) this.start = await this.storage.getLatestSequence();
    const start = this.held.through === 0 && this.start !== undefined ? { start: this.start } : {};
    const page = await this.storage.getScopedChanges(this.checkpoint, { collection: 'todos', scope: this.scope, held: this.held, ...start, limit, maxBytes });
    for (const change of page) {
      expect(change.seq).toBeGreaterThan(this.checkpoint);
      expect(change.collection).toBe('todos');
      expect(matchesScope(this.scope, change.data)).toBe(!change.leave);
      if (change.leave || change.op === 'delete') this.documents.delete(change.documentId);
      else this.documents.set(change.documentId, change.data);
    }
    expect(page.through).toBeGreaterThanOrEqual(this.checkpoint);
    this.checkpoint = page.through;
    const done = !page.cutByBytes && (limit === undefined || page.length < limit);
    if (done) this.held = { scope: this.scope, through: this.checkpoint };
    return done;
  }

  async finish(): Promise<void> {
    while (!(await this.page(3, 60)));
  }

  changeScope(scope: Scope): void {
    for (const [id, data] of this.documents) if (!matchesScope(scope, data)) this.documents.delete(id);
    this.held = { scope: this.scope, through: this.checkpoint };
    this.scope = scope;
    this.checkpoint = 0;
    this.start = undefined;
  }
}
