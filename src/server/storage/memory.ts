import type { DocumentHead, StoredEvent } from '../../shared/protocol/index.js';
import { frozenJsonCopy } from '../../shared/json.js';
import { DocumentMap } from '../../shared/document-map.js';
import { matchesScope } from '../../shared/scope.js';
import { assertClaimable } from './claims.js';
import { assertScopeCollection, assertScopeField, leaveFloor, scopedLimit, scopedPage, scopedThrough } from './scoped.js';
import { decideSave, documentHeads, headOf } from './save.js';
import { changesPage, documentBytes } from './size.js';
import type { ChangesPage, EventQuery, IncomingEvent, SaveResult, ScopedChange, ScopedPage, ScopedQuery, SyncStorage } from './types.js';

/**
 * The event as stored: its fields in one literal (an event has no others:
 * the protocol's schema is strict), its data and patch deep copies, all of it
 * frozen. Several times faster than a generic deep copy for each pushed event.
 */
function storedCopy(event: IncomingEvent, seq: number, serverTime: number): StoredEvent {
  const stored: StoredEvent = {
    id: event.id,
    collection: event.collection,
    documentId: event.documentId,
    op: event.op,
    data: frozenJsonCopy(event.data),
    baseEventId: event.baseEventId ?? null,
    hlc: event.hlc,
    clientId: event.clientId,
    seq,
    serverTime,
  };
  if (event.patch !== undefined) stored.patch = frozenJsonCopy(event.patch);
  return Object.freeze(stored);
}

/**
 * Keeps everything in process memory: for tests, demos and a single
 * short-lived server. Events and heads it returns are shared and frozen.
 */
export class MemorySyncStorage implements SyncStorage {
  private events: StoredEvent[] = [];
  private readonly sequenceById = new Map<string, number>();
  private readonly heads = new DocumentMap<DocumentHead>();
  /** Each document's kept events, oldest first (its head last): what scoped reads judge leaves by. */
  private readonly history = new DocumentMap<StoredEvent[]>();
  /** Sequences of events that are no longer their document's head. */
  private readonly superseded = new Set<number>();
  private lastSeq = 0;
  /** The size of each stored document as pages count it, measured when a page first needs it. */
  private readonly sizes = new WeakMap<StoredEvent, number>();
  /** The user key of each claimed client id. */
  private readonly owners = new Map<string, string>();

  async init(): Promise<void> {}

  async saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    const serverTime = Date.now();
    return events.map((event) => this.saveOne(event, serverTime));
  }

  private saveOne(event: IncomingEvent, serverTime: number): SaveResult {
    const head = this.heads.get(event.collection, event.documentId);
    const refused = decideSave(event, this.sequenceById.get(event.id), head, documentHeads);
    if (refused) return refused;
    const seq = ++this.lastSeq;
    if (head) this.superseded.add(head.seq);
    // Copied once on the way in and frozen: reads hand out these objects without copying again.
    const stored = storedCopy(event, seq, serverTime);
    this.events.push(stored);
    const history = this.history.get(event.collection, event.documentId);
    if (history) history.push(stored);
    else this.history.set(event.collection, event.documentId, [stored]);
    this.sequenceById.set(event.id, seq);
    this.heads.set(event.collection, event.documentId, Object.freeze(headOf(event, seq, stored.data)));
    return { id: event.id, status: 'accepted', seq };
  }

  async getEventsAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    const collections = options.collections ? new Set(options.collections) : undefined;
    const result: StoredEvent[] = [];
    for (let i = this.firstIndexAfter(checkpoint); i < this.events.length && result.length < limit; i++) {
      const event = this.events[i]!;
      if (!collections || collections.has(event.collection)) result.push(event);
    }
    return result;
  }

  async getChangesAfter(checkpoint: number, options: EventQuery = {}): Promise<ChangesPage> {
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    const maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    const collections = options.collections ? new Set(options.collections) : undefined;
    const result: StoredEvent[] = [];
    let bytes = 0;
    for (let i = this.firstIndexAfter(checkpoint); i < this.events.length && result.length < limit; i++) {
      const event = this.events[i]!;
      if (collections && !collections.has(event.collection)) continue;
      if (this.superseded.has(event.seq)) continue;
      if (maxBytes !== Number.POSITIVE_INFINITY) {
        bytes += this.sizeOf(event);
        if (bytes > maxBytes && result.length > 0) return changesPage(result, true);
      }
      result.push(event);
    }
    return result;
  }

  async getScopedChanges(checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
    const limit = scopedLimit(query.limit);
    if (limit !== undefined && limit <= 0) return scopedPage([], false, checkpoint);
    const maxBytes = query.maxBytes ?? Number.POSITIVE_INFINITY;
    const { collection, scope } = query;
    const held = query.held.through;
    const last = Math.max(checkpoint, held);
    const leavesAfter = leaveFloor(checkpoint, query);
    const result: ScopedChange[] = [];
    let bytes = 0;
    // Every head after the checkpoint, looked at once: linear in the events after it.
    for (let i = this.firstIndexAfter(checkpoint); i < this.events.length; i++) {
      const event = this.events[i]!;
      if (event.collection !== collection || this.superseded.has(event.seq)) continue;
      let change: ScopedChange;
      if (matchesScope(scope, event.data)) {
        if (event.seq <= held && matchesScope(query.held.scope, event.data)) continue;
        change = event;
        if (maxBytes !== Number.POSITIVE_INFINITY) {
          bytes += this.sizeOf(event);
          if (bytes > maxBytes && result.length > 0) return scopedPage(result, true, result.at(-1)!.seq);
        }
      } else {
        if (scope === null || last === 0 || event.seq <= leavesAfter || !this.mayHold(event, query)) continue;
        change = Object.freeze({ ...event, leave: true as const });
      }
      result.push(change);
      if (limit !== undefined && result.length >= limit) break;
    }
    return scopedPage(result, false, scopedThrough(result, false, limit, checkpoint, this.lastSeq));
  }

  /** Whether the reader may hold the document whose head is `head` (see scoped.ts for the rule). */
  private mayHold(head: StoredEvent, query: ScopedQuery): boolean {
    const history = this.history.get(head.collection, head.documentId)!;
    const held = query.held.through;
    // From the version at C (the last kept event at or below it), or from the first kept event.
    let start = lastIndexAtOrBelow(history, held);
    if (start < 0) {
      const first = history[0]!;
      if (first.baseEventId !== null) return true; // its versions up to C were compacted away
      start = 0;
    }
    for (let i = start; i < history.length && history[i]!.seq < head.seq; i++) {
      const version = history[i]!;
      if (version.op !== 'delete' && matchesScope(query.scope, version.data)) return true;
    }
    return false;
  }

  async indexScopeFields(fields: Readonly<Record<string, readonly string[]>>): Promise<void> {
    // Nothing to index (scoped reads look at each head after the checkpoint once); what the others refuse is refused.
    for (const [collection, names] of Object.entries(fields)) {
      assertScopeCollection(collection);
      names.forEach(assertScopeField);
    }
  }

  private sizeOf(event: StoredEvent): number {
    let size = this.sizes.get(event);
    if (size === undefined) this.sizes.set(event, (size = documentBytes(event.data)));
    return size;
  }

  async clearEventsBefore(checkpoint: number): Promise<number> {
    const index = this.firstIndexAfter(checkpoint - 1);
    const kept: StoredEvent[] = [];
    let removed = 0;
    // How many of each document's oldest events go: superseded events are always a document's oldest.
    const cleared = new Map<StoredEvent[], number>();
    for (const event of this.events.slice(0, index)) {
      // The id stays known (sequenceById), so that a late retry is still answered as a duplicate.
      if (!this.superseded.has(event.seq)) kept.push(event);
      else {
        this.superseded.delete(event.seq);
        const history = this.history.get(event.collection, event.documentId)!;
        cleared.set(history, (cleared.get(history) ?? 0) + 1);
        removed++;
      }
    }
    this.events = [...kept, ...this.events.slice(index)];
    for (const [history, count] of cleared) history.splice(0, count);
    return removed;
  }

  async getHeads(collection: string, documentIds: readonly string[]): Promise<DocumentHead[]> {
    const heads: DocumentHead[] = [];
    for (const id of documentIds) {
      const head = this.heads.get(collection, id);
      if (head) heads.push(head);
    }
    return heads;
  }

  async getLatestSequence(): Promise<number> {
    return this.lastSeq;
  }

  async countEvents(): Promise<number> {
    return this.events.length;
  }

  async claimClient(clientId: string, userKey: string): Promise<string> {
    assertClaimable(clientId, userKey);
    const owner = this.owners.get(clientId);
    if (owner !== undefined) return owner;
    this.owners.set(clientId, userKey);
    return userKey;
  }

  async close(): Promise<void> {}

  /** Index of the first event whose sequence is above `checkpoint` (binary search). */
  private firstIndexAfter(checkpoint: number): number {
    let low = 0;
    let high = this.events.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.events[mid]!.seq <= checkpoint) low = mid + 1;
      else high = mid;
    }
    return low;
  }
}

/** Index of the last event with a sequence at or below `seq` in an ascending list, -1 when none (binary search). */
function lastIndexAtOrBelow(events: readonly StoredEvent[], seq: number): number {
  let low = 0;
  let high = events.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (events[mid]!.seq <= seq) low = mid + 1;
    else high = mid;
  }
  return low - 1;
}
