/**
 * The one suite every SyncStorage passes (memory, SQLite, PostgreSQL). It
 * states the storage contract of src/server/storage/types.ts as tests.
 */
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatHlc } from '../src/shared/hlc.js';
import { MAX_DOCUMENT_ID_BYTES, isClientId, isDocumentId, type DocumentHead, type StoredEvent } from '../src/shared/protocol.js';
import { matchesScope, parseScope, type Scope, type ScopeSelector } from '../src/shared/scope.js';
import { MemorySyncStorage } from '../src/server/storage/memory.js';
import { documentBytes } from '../src/server/storage/size.js';
import type { IncomingEvent, SaveResult, ScopedPage, ScopedQuery, SyncStorage } from '../src/server/storage/types.js';

export interface StorageUnderTest {
  storage: SyncStorage;
  /** Closes whatever instances are open and removes their data. */
  cleanup(): Promise<void>;
  /** For durable storages: after the suite closed the last instance, opens a new one over the same data. */
  reopen?(): Promise<SyncStorage>;
}

const FC_SEED = Number(process.env.FC_SEED ?? 20_240_611);

interface EventFields {
  documentId: string;
  base?: string | null;
  collection?: string;
  op?: IncomingEvent['op'];
  data?: Record<string, unknown>;
  patch?: IncomingEvent['patch'];
  clientId?: string;
  id?: string;
}

let madeEvents = 0;
/** A valid incoming event; ids are unique across the whole run so no two tests can collide. */
function makeEvent(fields: EventFields): IncomingEvent {
  const n = ++madeEvents;
  const clientId = fields.clientId ?? 'client-a';
  const event: IncomingEvent = {
    id: fields.id ?? `evt-${String(n).padStart(6, '0')}-${Math.random().toString(36).slice(2, 8)}`,
    collection: fields.collection ?? 'todos',
    documentId: fields.documentId,
    op: fields.op ?? (fields.base ? 'update' : 'insert'),
    data: fields.data ?? { id: fields.documentId, title: `version ${n}`, done: n % 2 === 0 },
    baseEventId: fields.base ?? null,
    hlc: formatHlc({ millis: 1_700_000_000_000 + n, counter: 0, node: clientId }),
    clientId,
  };
  if (fields.patch) event.patch = fields.patch;
  return event;
}

/** What storage must give back for an accepted event, apart from its server time. */
const stored = (event: IncomingEvent, seq: number) => ({ ...event, seq });
const withoutTime = (events: StoredEvent[]) => events.map(({ serverTime, ...rest }) => rest);
const ids = (events: { id: string }[]) => events.map((event) => event.id);

/** A small deterministic generator (mulberry32), so randomized cases repeat exactly. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function acceptedSeq(result: SaveResult | undefined): number {
  expect(result?.status).toBe('accepted');
  return (result as { seq: number }).seq;
}


type Data = Record<string, unknown>;
interface Written {
  seq: number;
  event: IncomingEvent;
}
/** What a scoped page is compared by: each row's sequence, event id and whether it is a leave; the cut; where the checkpoint moves. */
interface PageSummary {
  rows: [seq: number, id: string, leave: boolean][];
  cutByBytes: boolean;
  through: number;
}
const summary = (page: ScopedPage): PageSummary => ({
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
 *   (nothing held, nothing sent).
 */
class ScopedHistory {
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
      } else if (query.scope !== null && last > 0 && h.seq > last && mayHold(kept.get(h.event.documentId)!, h)) {
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
function scopedQuery(checkpoint: number, scope: ScopeSelector | null, fields: Partial<Omit<ScopedQuery, 'scope'>> = {}): ScopedQuery {
  const parsed = parseScope(scope);
  return { collection: 'todos', scope: parsed, held: { scope: parsed, through: checkpoint }, ...fields };
}

/** The fields random scopes name, and what random documents hold in them. */
const SCOPE_FIELDS = ['crewId', 'n'] as const;
const scopeValue = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<string | number | boolean>('a', 'b', '1', 'true', '', 'é', '\uffff', '\ue000', '😀', 'a😀', 'aé', 0, 1, -1, 1.5, 0.1 + 0.2, 2 ** 53, 2 ** 60, 1e19, 1e21, -1e-7, true, false) },
  // Strings from characters where UTF-16 order and code point order part: high BMP, private use, astral.
  { weight: 2, arbitrary: fc.string({ unit: fc.constantFrom('a', 'b', '1', 'é', '\uffff', '\ue000', '😀', '𝄞'), maxLength: 3 }) },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
  { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }) },
);
const fieldValue = fc.oneof({ weight: 8, arbitrary: scopeValue }, { weight: 1, arbitrary: fc.constantFrom<unknown>(null, [1], { x: 1 }) });
const documentData = fc.record({ crewId: fieldValue, n: fieldValue, pad: fc.string({ maxLength: 30 }) }, { requiredKeys: [] });
const scopeAtom = fc.oneof(
  fc.record({ field: fc.constantFrom(...SCOPE_FIELDS), op: fc.constant('$eq'), value: scopeValue }),
  fc.record({ field: fc.constantFrom(...SCOPE_FIELDS), op: fc.constant('$in'), value: fc.array(scopeValue, { minLength: 1, maxLength: 3 }) }),
  fc.record({ field: fc.constantFrom(...SCOPE_FIELDS), op: fc.constantFrom('$gt', '$gte', '$lt', '$lte'), value: scopeValue.filter((v) => typeof v !== 'boolean') }),
);
const scopeSelector: fc.Arbitrary<ScopeSelector | null> = fc.option(
  fc.array(scopeAtom, { minLength: 1, maxLength: 3 }).map((atoms) => ({ $and: atoms.map(({ field, op, value }) => ({ [field]: { [op]: value } })) }) as ScopeSelector),
  { nil: null, freq: 6 },
);

type Step =
  | { kind: 'write'; documentId: string; collection: string; data: Data }
  | { kind: 'delete'; documentId: string; collection: string }
  | { kind: 'compact'; pick: number };
const collectionArb = fc.constantFrom('todos', 'todos', 'todos', 'notes');
const stepArb = (data: fc.Arbitrary<Data>, documents = 6): fc.Arbitrary<Step> => {
  const documentId = fc.integer({ min: 0, max: documents - 1 }).map((i) => `d${i}`);
  return fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), documentId, collection: collectionArb, data }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), documentId, collection: collectionArb }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('compact' as const), pick: fc.nat(1000) }) },
  );
};

async function playSteps(history: ScopedHistory, steps: readonly Step[]): Promise<void> {
  for (const step of steps) {
    if (step.kind === 'write') await history.write(step.documentId, step.data, step.collection);
    else if (step.kind === 'delete') {
      const head = history.head(step.documentId, step.collection);
      if (head && head.event.op !== 'delete') await history.remove(step.documentId, step.collection);
    } else await history.compact(step.pick % (history.latest() + 2));
  }
}

const scopedScenario = fc.record({
  steps: fc.array(stepArb(documentData), { minLength: 1, maxLength: 25 }),
  queries: fc.array(
    fc.record({
      checkpointPick: fc.nat(1000),
      // null: the scope is unchanged (held = scope, through the checkpoint); else a held scope and sequence of their own.
      heldPick: fc.option(fc.nat(1000), { nil: null }),
      scope: scopeSelector,
      heldScope: scopeSelector,
      limit: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
      maxBytes: fc.option(fc.integer({ min: 1, max: 150 }), { nil: undefined }),
    }),
    { minLength: 1, maxLength: 5 },
  ),
  index: fc.boolean(),
});

const readerSelector: fc.Arbitrary<ScopeSelector | null> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<ScopeSelector | null>({ crewId: 'a' }, { crewId: { $in: ['a', 'b'] } }, { n: { $gte: 0 } }, { crewId: 'b', n: { $lt: 2 } }, null) },
  { weight: 1, arbitrary: scopeSelector },
);
const readerData = fc.record(
  { crewId: fc.constantFrom<unknown>('a', 'a', 'b', 'c', 1, true), n: fc.integer({ min: -2, max: 2 }) },
  { requiredKeys: [] },
);
const readerScenario = fc.record({
  rounds: fc.array(
    fc.record({
      steps: fc.array(stepArb(readerData, 3), { maxLength: 5 }),
      // Mostly small pages, so that catch-ups are cut and documents change between their pages.
      read: fc.option(
        fc.record({ limit: fc.option(fc.integer({ min: 1, max: 2 }), { nil: undefined, freq: 5 }), maxBytes: fc.option(fc.integer({ min: 1, max: 80 }), { nil: undefined }) }),
        { nil: null, freq: 5 },
      ),
      changeScope: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
      scope: readerSelector,
    }),
    { minLength: 1, maxLength: 30 },
  ),
  index: fc.boolean(),
});

/**
 * A reader as the protocol has one: it applies each page (a change sets or
 * deletes the document, a leave drops it), moves its checkpoint to the
 * page's `through`, and holds its scope through the checkpoint once a page
 * ends the catch-up. On a scope change it drops what the new scope leaves
 * out and starts again from 0, holding the old scope at the old checkpoint.
 */
class ScopedReader {
  readonly documents = new Map<string, Data>();
  private checkpoint = 0;
  private held: ScopedQuery['held'];

  constructor(
    private readonly storage: SyncStorage,
    public scope: Scope,
  ) {
    this.held = { scope, through: 0 };
  }

  /** Reads and applies one page; true when it ended the catch-up. */
  async page(limit?: number, maxBytes?: number): Promise<boolean> {
    const page = await this.storage.getScopedChanges(this.checkpoint, { collection: 'todos', scope: this.scope, held: this.held, limit, maxBytes });
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
  }
}

export function runStorageConformance(name: string, makeStorage: () => Promise<StorageUnderTest>): void {
  describe(`${name}: SyncStorage conformance`, () => {
    let current: StorageUnderTest;
    let storage: SyncStorage;

    beforeEach(async () => {
      current = await makeStorage();
      storage = current.storage;
      await storage.init();
    });
    afterEach(async () => {
      await current.cleanup();
    });

    /** Saves events that must all be accepted and returns their sequences. */
    async function saveAccepted(...events: IncomingEvent[]): Promise<number[]> {
      const results = await storage.saveEvents(events);
      return results.map(acceptedSeq);
    }

    it('starts empty', async () => {
      expect(await storage.getLatestSequence()).toBe(0);
      expect(await storage.countEvents()).toBe(0);
      expect(await storage.getEventsAfter(0)).toEqual([]);
    });

    it('assigns strictly increasing sequences and gives events back as they were pushed', async () => {
      const first = [
        makeEvent({ documentId: 'a', data: { nested: { list: [1, 2.5, 'x', null, true] }, text: 'héllo ✓ 日本', n: -3 } }),
        makeEvent({ documentId: 'b', collection: 'notes', clientId: 'client-b' }),
        makeEvent({ documentId: 'c' }),
      ];
      const firstSeqs = await saveAccepted(...first);
      const second = [
        makeEvent({ documentId: 'a', base: first[0]!.id, patch: [{ op: 'replace', path: '/text', value: 'bye' }] }),
        makeEvent({ documentId: 'd', data: {} }),
      ];
      const secondSeqs = await saveAccepted(...second);
      const seqs = [...firstSeqs, ...secondSeqs];
      for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBeGreaterThan(seqs[i - 1]!);

      const all = await storage.getEventsAfter(0);
      expect(withoutTime(all)).toEqual([...first, ...second].map((event, i) => stored(event, seqs[i]!)));
      expect(all.every((event) => typeof event.serverTime === 'number' && event.serverTime > 0)).toBe(true);
      expect('patch' in all[0]!).toBe(false);
      expect(await storage.getLatestSequence()).toBe(seqs.at(-1));
      expect(await storage.countEvents()).toBe(5);
    });

    it('answers a retried event as a duplicate with its first sequence and stores it once', async () => {
      const event = makeEvent({ documentId: 'a' });
      const [seq] = await saveAccepted(event);
      expect(await storage.saveEvents([event])).toEqual([{ id: event.id, status: 'duplicate', seq }]);

      const next = makeEvent({ documentId: 'a', base: event.id });
      const results = await storage.saveEvents([event, next, next]);
      expect(results[0]).toEqual({ id: event.id, status: 'duplicate', seq });
      const nextSeq = acceptedSeq(results[1]);
      expect(results[2]).toEqual({ id: next.id, status: 'duplicate', seq: nextSeq });

      // The id alone decides: a retry carrying different content is still the same event.
      expect(await storage.saveEvents([{ ...event, data: { changed: true } }])).toEqual([
        { id: event.id, status: 'duplicate', seq },
      ]);
      expect(await storage.countEvents()).toBe(2);
      expect(ids(await storage.getEventsAfter(0))).toEqual([event.id, next.id]);
      expect(await storage.getLatestSequence()).toBe(nextSeq);
    });

    it('refuses stale bases, inserts over existing documents and bases on unknown documents', async () => {
      const v1 = makeEvent({ documentId: 'a' });
      const v2 = makeEvent({ documentId: 'a', base: v1.id });
      const [, seq2] = await saveAccepted(v1, v2);
      const head: DocumentHead = {
        collection: 'todos',
        documentId: 'a',
        seq: seq2!,
        eventId: v2.id,
        data: v2.data,
        deleted: false,
        hlc: v2.hlc,
        clientId: v2.clientId,
      };

      const stale = makeEvent({ documentId: 'a', base: v1.id });
      const insertOver = makeEvent({ documentId: 'a', base: null });
      const unknownBase = makeEvent({ documentId: 'ghost', base: 'evt-never-stored' });
      const wrongCollection = makeEvent({ documentId: 'a', collection: 'notes', base: v2.id });
      expect(await storage.saveEvents([stale, insertOver, unknownBase, wrongCollection])).toEqual([
        { id: stale.id, status: 'conflict', head },
        { id: insertOver.id, status: 'conflict', head },
        { id: unknownBase.id, status: 'conflict', head: null },
        { id: wrongCollection.id, status: 'conflict', head: null },
      ]);
      expect(await storage.countEvents()).toBe(2);
      expect(await storage.getHeads('todos', ['a'])).toEqual([head]);
      // A refused event was not stored, so sending it again is judged afresh.
      expect((await storage.saveEvents([stale]))[0]!.status).toBe('conflict');
    });

    it('accepts a chain of events on one document inside one batch', async () => {
      const e1 = makeEvent({ documentId: 'a' });
      const e2 = makeEvent({ documentId: 'a', base: e1.id });
      const e3 = makeEvent({ documentId: 'a', base: e2.id });
      const staleInBatch = makeEvent({ documentId: 'a', base: e1.id });
      const e4 = makeEvent({ documentId: 'a', base: e3.id });
      const results = await storage.saveEvents([e1, e2, e3, staleInBatch, e4]);
      const seq3 = acceptedSeq(results[2]);
      expect(results.map((r) => r.status)).toEqual(['accepted', 'accepted', 'accepted', 'conflict', 'accepted']);
      expect(results[3]).toMatchObject({ status: 'conflict', head: { eventId: e3.id, seq: seq3, data: e3.data } });
      const [head] = await storage.getHeads('todos', ['a']);
      expect(head).toMatchObject({ eventId: e4.id, seq: acceptedSeq(results[4]), data: e4.data, deleted: false });
    });

    it('marks a deleted document in its head, keeps its data, and lets a later event build on the delete', async () => {
      const insert = makeEvent({ documentId: 'a' });
      const remove = makeEvent({ documentId: 'a', base: insert.id, op: 'delete', data: insert.data });
      const [, deleteSeq] = await saveAccepted(insert, remove);
      expect(await storage.getHeads('todos', ['a'])).toEqual([
        expect.objectContaining({ eventId: remove.id, seq: deleteSeq, deleted: true, data: insert.data }),
      ]);
      expect((await storage.getEventsAfter(0)).map((e) => e.op)).toEqual(['insert', 'delete']);

      const revive = makeEvent({ documentId: 'a', base: remove.id, op: 'insert' });
      await saveAccepted(revive);
      expect(await storage.getHeads('todos', ['a'])).toEqual([
        expect.objectContaining({ eventId: revive.id, deleted: false, data: revive.data }),
      ]);
    });

    it('pages through every event after any checkpoint exactly once and in order (randomized)', async () => {
      const step = fc.record({
        collection: fc.constantFrom('todos', 'notes'),
        documentId: fc.constantFrom('d1', 'd2', 'd3'),
        kind: fc.constantFrom('next', 'next', 'next', 'delete', 'stale', 'retry'),
        clientId: fc.constantFrom('client-a', 'client-b'),
      });
      const scenario = fc.record({
        calls: fc.array(fc.array(step, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 6 }),
        reads: fc.array(
          fc.record({
            checkpointPick: fc.nat({ max: 100 }),
            limit: fc.integer({ min: 1, max: 7 }),
            collections: fc.option(fc.subarray(['todos', 'notes']), { nil: undefined }),
          }),
          { minLength: 1, maxLength: 4 },
        ),
      });
      await fc.assert(
        fc.asyncProperty(scenario, async ({ calls, reads }) => {
          const under = await makeStorage();
          const oracle = new MemorySyncStorage(); // the reference implementation decides what must happen
          try {
            await under.storage.init();
            const accepted: { event: IncomingEvent; seq: number }[] = [];
            const sent: IncomingEvent[] = [];
            for (const call of calls) {
              const believedHeads = new Map<string, string>();
              for (const { event } of accepted) believedHeads.set(`${event.collection}/${event.documentId}`, event.id);
              const batch = call.map(({ kind, ...fields }) => {
                const key = `${fields.collection}/${fields.documentId}`;
                if (kind === 'retry' && sent.length > 0) return sent[fields.documentId.charCodeAt(1) % sent.length]!;
                const base = kind === 'stale' ? 'evt-stale-base' : believedHeads.get(key) ?? null;
                const event = makeEvent({ ...fields, base, op: kind === 'delete' ? 'delete' : undefined });
                if (kind !== 'stale') believedHeads.set(key, event.id);
                return event;
              });
              sent.push(...batch);
              const results = await under.storage.saveEvents(batch);
              const expected = await oracle.saveEvents(batch);
              expect(results.map((r) => r.status)).toEqual(expected.map((r) => r.status));
              expect(results.map((r) => (r.status === 'conflict' ? r.head?.eventId : null))).toEqual(
                expected.map((r) => (r.status === 'conflict' ? r.head?.eventId : null)),
              );
              results.forEach((result, i) => {
                if (result.status === 'accepted') accepted.push({ event: batch[i]!, seq: result.seq });
              });
            }
            const seqs = accepted.map((a) => a.seq);
            for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBeGreaterThan(seqs[i - 1]!);
            expect(await under.storage.getLatestSequence()).toBe(seqs.at(-1) ?? 0);
            expect(await under.storage.countEvents()).toBe(accepted.length);

            for (const { checkpointPick, limit, collections } of reads) {
              // Checkpoints on, between, below and above the stored sequences.
              const candidates = [0, ...seqs, ...seqs.map((s) => s - 1), (seqs.at(-1) ?? 0) + 3];
              const checkpoint = candidates[checkpointPick % candidates.length]!;
              const want = accepted
                .filter((a) => a.seq > checkpoint && (!collections || collections.includes(a.event.collection)))
                .map((a) => stored(a.event, a.seq));
              const got: StoredEvent[] = [];
              for (let cursor = checkpoint; ; ) {
                const page = await under.storage.getEventsAfter(cursor, { limit, collections });
                expect(page.length).toBeLessThanOrEqual(limit);
                if (page.length === 0) break;
                got.push(...page);
                cursor = page.at(-1)!.seq;
              }
              expect(withoutTime(got)).toEqual(want);
            }
          } finally {
            await under.cleanup();
          }
        }),
        { seed: FC_SEED, numRuns: 25, endOnFailure: true },
      );
    });

    it('filters by collection, keeping sequence order, checkpoint and limit', async () => {
      const events = ['todos', 'notes', 'tags', 'todos', 'notes', 'todos', 'tags'].map((collection, i) =>
        makeEvent({ collection, documentId: `doc-${i}` }),
      );
      const seqs = await saveAccepted(...events);
      const pick = (...indexes: number[]) => indexes.map((i) => stored(events[i]!, seqs[i]!));

      expect(withoutTime(await storage.getEventsAfter(0, { collections: ['todos', 'tags'] }))).toEqual(pick(0, 2, 3, 5, 6));
      expect(withoutTime(await storage.getEventsAfter(seqs[1]!, { collections: ['todos'], limit: 1 }))).toEqual(pick(3));
      expect(withoutTime(await storage.getEventsAfter(seqs[3]!, { collections: ['todos'] }))).toEqual(pick(5));
      expect(await storage.getEventsAfter(0, { collections: ['unknown'] })).toEqual([]);
      expect(await storage.getEventsAfter(0, { collections: [] })).toEqual([]);
      expect(withoutTime(await storage.getEventsAfter(0, { limit: 2 }))).toEqual(pick(0, 1));
    });

    it("gives a client everyone's events but its own", async () => {
      const events = [
        makeEvent({ documentId: 'a', clientId: 'client-a' }),
        makeEvent({ documentId: 'b', clientId: 'client-b' }),
        makeEvent({ documentId: 'c', clientId: 'client-b', collection: 'notes' }),
        makeEvent({ documentId: 'd', clientId: 'client-c' }),
        makeEvent({ documentId: 'e', clientId: 'client-a', collection: 'notes' }),
      ];
      const seqs = await saveAccepted(...events);
      expect(ids(await storage.getEventsForClient('client-a', ['todos', 'notes']))).toEqual(ids(events.slice(1, 4)));
      expect(ids(await storage.getEventsForClient('client-a', ['todos']))).toEqual([events[1]!.id, events[3]!.id]);
      expect(ids(await storage.getEventsForClient('client-b', ['todos', 'notes'], seqs[0]))).toEqual([
        events[3]!.id,
        events[4]!.id,
      ]);
      expect(await storage.getEventsForClient('client-a', [])).toEqual([]);
    });

    it('compacts: clears superseded events below the checkpoint, keeps every head (tombstones too), never reuses a sequence', async () => {
      const a1 = makeEvent({ documentId: 'a' });
      const a2 = makeEvent({ documentId: 'a', base: a1.id });
      const b1 = makeEvent({ documentId: 'b' });
      const c1 = makeEvent({ documentId: 'c' });
      const c2 = makeEvent({ documentId: 'c', base: c1.id, op: 'delete', data: c1.data });
      const seqs = await saveAccepted(a1, a2, b1, c1, c2);
      const headsBefore = await storage.getHeads('todos', ['a', 'b', 'c']);

      expect(await storage.clearEventsBefore(seqs[2]!)).toBe(1);
      expect(ids(await storage.getEventsAfter(0))).toEqual([a2.id, b1.id, c1.id, c2.id]);
      expect(await storage.clearEventsBefore(seqs[2]!)).toBe(0);
      expect(await storage.clearEventsBefore(0)).toBe(0);
      expect(await storage.clearEventsBefore(seqs[4]! + 1)).toBe(1);
      expect(ids(await storage.getEventsAfter(0))).toEqual([a2.id, b1.id, c2.id]);
      expect(await storage.countEvents()).toBe(3);
      expect(await storage.getHeads('todos', ['a', 'b', 'c'])).toEqual(headsBefore);

      // Catch-up from any checkpoint is still exact, deletes included.
      expect(ids(await storage.getChangesAfter(0))).toEqual([a2.id, b1.id, c2.id]);
      expect(ids(await storage.getChangesAfter(seqs[0]!))).toEqual([a2.id, b1.id, c2.id]);
      expect(ids(await storage.getChangesAfter(seqs[2]!))).toEqual([c2.id]);

      // A retry of a cleared event (its acknowledgement was lost) still gets its first answer:
      // a conflict would make the client settle, and maybe push again, a change the server took long ago.
      const [retriedOld, retriedHead] = await storage.saveEvents([a1, a2]);
      expect(retriedOld).toEqual({ id: a1.id, status: 'duplicate', seq: seqs[0] });
      expect(retriedHead).toEqual({ id: a2.id, status: 'duplicate', seq: seqs[1] });
      expect(await storage.countEvents()).toBe(3);

      expect(await storage.getLatestSequence()).toBe(seqs[4]);
      const a3 = makeEvent({ documentId: 'a', base: a2.id });
      const [after] = await saveAccepted(a3);
      expect(after).toBeGreaterThan(seqs[4]!);
      expect(ids(await storage.getChangesAfter(0))).toEqual([b1.id, c2.id, a3.id]);
    });

    it('gives every changed document once, as its head, in sequence order, in pages and per collection', async () => {
      const random = seededRandom(7);
      const heads = new Map<string, IncomingEvent>();
      for (let round = 0; round < 60; round++) {
        const collection = random() < 0.3 ? 'notes' : 'todos';
        const documentId = `d${Math.floor(random() * 12)}`;
        const key = `${collection}/${documentId}`;
        const previous = heads.get(key);
        const event = makeEvent({ collection, documentId, base: previous?.id ?? null, op: previous ? (random() < 0.2 ? 'delete' : 'update') : 'insert' });
        await saveAccepted(event);
        heads.set(key, event);
      }
      for (const limit of [1, 5, 1000]) {
        const seen: StoredEvent[] = [];
        let checkpoint = 0;
        for (;;) {
          const page = await storage.getChangesAfter(checkpoint, { collections: ['todos'], limit });
          seen.push(...page);
          if (page.length < limit) break;
          checkpoint = page[page.length - 1]!.seq;
        }
        const expected = [...heads.entries()].filter(([key]) => key.startsWith('todos/')).map(([, event]) => event.id);
        expect(ids(seen).sort()).toEqual(expected.sort());
        expect(seen.map((e) => e.seq)).toEqual([...seen.map((e) => e.seq)].sort((x, y) => x - y));
      }
    });

    it('returns the heads of the documents asked for and leaves absent ones out', async () => {
      const a1 = makeEvent({ documentId: 'a' });
      const a2 = makeEvent({ documentId: 'a', base: a1.id, clientId: 'client-b' });
      const b1 = makeEvent({ documentId: 'b' });
      const bGone = makeEvent({ documentId: 'b', base: b1.id, op: 'delete', data: b1.data });
      const noteA = makeEvent({ documentId: 'a', collection: 'notes' });
      const seqs = await saveAccepted(a1, a2, b1, bGone, noteA);
      const headOf = (event: IncomingEvent, seq: number, deleted = false): DocumentHead => ({
        collection: event.collection,
        documentId: event.documentId,
        seq,
        eventId: event.id,
        data: event.data,
        deleted,
        hlc: event.hlc,
        clientId: event.clientId,
      });
      const heads = await storage.getHeads('todos', ['b', 'missing', 'a']);
      expect([...heads].sort((x, y) => x.documentId.localeCompare(y.documentId))).toEqual([
        headOf(a2, seqs[1]!),
        headOf(bGone, seqs[3]!, true),
      ]);
      expect(await storage.getHeads('notes', ['a', 'b'])).toEqual([headOf(noteA, seqs[4]!)]);
      expect(await storage.getHeads('todos', [])).toEqual([]);
      expect(await storage.getHeads('unknown', ['a'])).toEqual([]);
    });

    it('can be initialized again without losing anything', async () => {
      const event = makeEvent({ documentId: 'a' });
      const [seq] = await saveAccepted(event);
      await storage.init();
      await Promise.all([storage.init(), storage.init()]);
      expect(withoutTime(await storage.getEventsAfter(0))).toEqual([stored(event, seq!)]);
      await saveAccepted(makeEvent({ documentId: 'a', base: event.id }));
      expect(await storage.countEvents()).toBe(2);
    });

    it('keeps events, heads and sequences across close and reopen', async (context) => {
      if (!current.reopen) return context.skip('this storage is not durable');
      const a1 = makeEvent({ documentId: 'a', data: { deep: { list: [1, { x: 'y' }] } } });
      const a2 = makeEvent({ documentId: 'a', base: a1.id, patch: [{ op: 'add', path: '/z', value: 1 }] });
      const b1 = makeEvent({ documentId: 'b', collection: 'notes' });
      const b2 = makeEvent({ documentId: 'b', collection: 'notes', base: b1.id, op: 'delete', data: b1.data });
      const seqs = await saveAccepted(a1, a2, b1, b2);
      const eventsBefore = await storage.getEventsAfter(0);
      const headsBefore = [...(await storage.getHeads('todos', ['a'])), ...(await storage.getHeads('notes', ['b']))];

      await storage.close();
      storage = await current.reopen();
      await storage.init();
      expect(await storage.getEventsAfter(0)).toEqual(eventsBefore);
      expect([...(await storage.getHeads('todos', ['a'])), ...(await storage.getHeads('notes', ['b']))]).toEqual(headsBefore);
      expect(await storage.getLatestSequence()).toBe(seqs[3]);
      expect(await storage.saveEvents([a2])).toEqual([{ id: a2.id, status: 'duplicate', seq: seqs[1] }]);
      const [a3] = await saveAccepted(makeEvent({ documentId: 'a', base: a2.id }));
      expect(a3).toBeGreaterThan(seqs[3]!);

      // Even with every event cleared, a restarted storage never hands out an old sequence again.
      await storage.clearEventsBefore(a3! + 1);
      await storage.close();
      storage = await current.reopen();
      await storage.init();
      expect(await storage.getLatestSequence()).toBe(a3);
      const [c1] = await saveAccepted(makeEvent({ documentId: 'c' }));
      expect(c1).toBeGreaterThan(a3!);
    });

    it('keeps the longest document ids the protocol allows, of any script, in the longest collection name, exactly', async () => {
      // At the byte bound in every width of UTF-8: 1, 3 and 4 bytes a character.
      const longest = ['x'.repeat(MAX_DOCUMENT_ID_BYTES), `${'日'.repeat(341)}x`, '😀'.repeat(MAX_DOCUMENT_ID_BYTES / 4), `${'é'.repeat(511)}xx`];
      const collection = `c${'x'.repeat(127)}`;
      for (const id of longest) {
        expect(isDocumentId(id)).toBe(true);
        expect(Buffer.byteLength(id)).toBe(MAX_DOCUMENT_ID_BYTES);
      }
      const inserts = longest.map((documentId) => makeEvent({ documentId, collection }));
      const seqs = await saveAccepted(...inserts);
      const updates = longest.map((documentId, i) => makeEvent({ documentId, collection, base: inserts[i]!.id, op: 'update' }));
      const updateSeqs = await saveAccepted(...updates);

      expect(withoutTime(await storage.getEventsAfter(0))).toEqual([...inserts, ...updates].map((event, i) => stored(event, [...seqs, ...updateSeqs][i]!)));
      expect(withoutTime(await storage.getChangesAfter(0, { collections: [collection] }))).toEqual(updates.map((event, i) => stored(event, updateSeqs[i]!)));
      const heads = await storage.getHeads(collection, longest);
      expect(heads.map((head) => [head.documentId, head.eventId])).toEqual(updates.map((event) => [event.documentId, event.id]));
      // Conflicts are found on these ids too: the index holds them whole.
      const stale = makeEvent({ documentId: longest[1]!, collection, base: inserts[1]!.id });
      expect(await storage.saveEvents([stale])).toEqual([{ id: stale.id, status: 'conflict', head: heads[1] }]);
    });

    it('gives back odd characters exactly: line breaks, emoji, CJK, right-to-left text and marks, in ids, clocks and documents', async () => {
      const documentIds = ['line\nbreak', 'tab\tand\r\nCRLF', 'emoji 😀👩‍💻', '日本語の文書', 'עברית ‏ العربية', '\u202eevil.exe', 'zero\u200bwidth', ' spaced ', '\ufeffbom', 'a/b\\c"d\'e'];
      const clientIds = ['日本の端末', 'phone 😀', 'טלפון', '\u202eclient', 'naïve-ünïcödé'];
      for (const clientId of clientIds) expect(isClientId(clientId)).toBe(true);
      const events = documentIds.map((documentId, i) =>
        makeEvent({
          documentId,
          clientId: clientIds[i % clientIds.length],
          data: { id: documentId, 'key\nwith break': 'value\r\n', '鍵': ['値', '😀', { 'עמק': 'שווה ‏' }], '\u202e': '\u2028\u2029', nested: { '': '', emoji: '👩‍👩‍👧‍👦' } },
        }),
      );
      const seqs = await saveAccepted(...events);
      const expected = events.map((event, i) => stored(event, seqs[i]!));
      expect(withoutTime(await storage.getEventsAfter(0))).toEqual(expected);
      expect(withoutTime(await storage.getChangesAfter(0))).toEqual(expected);
      const heads = await storage.getHeads('todos', documentIds);
      expect(heads.map((head) => [head.documentId, head.data, head.hlc, head.clientId])).toEqual(events.map((event) => [event.documentId, event.data, event.hlc, event.clientId]));
      // Ids that differ only in ways some comparisons ignore (case, normalization, width) are different documents.
      const lookalikes = ['Straße', 'STRASSE', 'strasse', 'e\u0301', '\u00e9', 'ｆｕｌｌ', 'full'];
      const lookalikeEvents = lookalikes.map((documentId) => makeEvent({ documentId }));
      await saveAccepted(...lookalikeEvents);
      expect((await storage.getHeads('todos', lookalikes)).map((head) => head.documentId)).toEqual(lookalikes);
    });

    it('bounds a page of changes in bytes: pages hold what fits, a document larger than a page comes alone, and every change comes once', async () => {
      const sizes = [10, 200, 5000, 30, 30, 30, 9000, 40, 1, 700];
      const events = sizes.map((size, i) => makeEvent({ documentId: `sized-${i}`, data: { id: `sized-${i}`, text: 'é'.repeat(size) } }));
      const notes = makeEvent({ documentId: 'other', collection: 'notes', data: { text: 'x'.repeat(20_000) } });
      await saveAccepted(...events.slice(0, 5), notes, ...events.slice(5));
      const bytes = new Map(events.map((event) => [event.id, documentBytes(event.data)]));

      for (const maxBytes of [1, 100, 5200, 12_000, 1_000_000]) {
        for (const limit of [3, 1000]) {
          const seen: string[] = [];
          let checkpoint = 0;
          for (;;) {
            const page = await storage.getChangesAfter(checkpoint, { collections: ['todos'], limit, maxBytes });
            if (page.length === 0) {
              expect(page.cutByBytes ?? false).toBe(false);
              break;
            }
            const pageBytes = page.reduce((sum, event) => sum + bytes.get(event.id)!, 0);
            // What fits, or one document alone, however large.
            expect(page.length === 1 || pageBytes <= maxBytes, `maxBytes ${maxBytes}: a page of ${pageBytes}`).toBe(true);
            expect(page.length).toBeLessThanOrEqual(limit);
            // Cut by bytes exactly when the next change would not have fit and the limit was not reached.
            const next = events[events.findIndex((event) => event.id === page.at(-1)!.id) + 1];
            const shouldCut = page.length < limit && next !== undefined && pageBytes + bytes.get(next.id)! > maxBytes;
            expect(page.cutByBytes ?? false, `maxBytes ${maxBytes}, limit ${limit}, after ${checkpoint}`).toBe(shouldCut);
            seen.push(...page.map((event) => event.id));
            checkpoint = page.at(-1)!.seq;
            if (page.length < limit && !page.cutByBytes) break;
          }
          expect(seen).toEqual(events.map((event) => event.id));
        }
      }
      // Without maxBytes, a page is bounded by count alone and never marked.
      const all = await storage.getChangesAfter(0);
      expect(all).toHaveLength(11);
      expect(all.cutByBytes ?? false).toBe(false);
    });

    it('claims a client id for the first user that uses it: later claims get that user, the same user again is fine', async () => {
      expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
      expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
      expect(await storage.claimClient('device-1', 'bob')).toBe('ana');
      expect(await storage.claimClient('device-2', 'bob')).toBe('bob');
      expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
      expect(await storage.claimClient('日本の端末 😀', 'ユーザー')).toBe('ユーザー');
      expect(await storage.claimClient('日本の端末 😀', 'ana')).toBe('ユーザー');
      // Claims many at once, on the same id: exactly one user wins, and everyone is told the same one.
      const users = Array.from({ length: 12 }, (_, i) => `user-${i}`);
      const answers = await Promise.all(users.map((user) => storage.claimClient('contested', user)));
      expect(new Set(answers).size).toBe(1);
      expect(users).toContain(answers[0]);
      // What no storage could keep is refused by every storage alike, and records nothing.
      await expect(storage.claimClient('bad\nid', 'ana')).rejects.toThrow();
      await expect(storage.claimClient('device-3', 'nul\u0000key')).rejects.toThrow();
      await expect(storage.claimClient('device-3', 'lone \ud800')).rejects.toThrow();
      expect(await storage.claimClient('device-3', 'carl')).toBe('carl');
    });

    it('keeps client id claims across close and reopen', async (context) => {
      if (!current.reopen) return context.skip('this storage is not durable');
      expect(await storage.claimClient('device-1', 'ana')).toBe('ana');
      await storage.close();
      storage = await current.reopen();
      await storage.init();
      expect(await storage.claimClient('device-1', 'bob')).toBe('ana');
    });

    it('lets exactly one of many concurrent pushes on the same base win', async () => {
      let base: string | null = null;
      for (let round = 0; round < 3; round++) {
        const contenders = Array.from({ length: 16 }, (_, i) =>
          makeEvent({ documentId: 'contested', base, clientId: `client-${i}` }),
        );
        const results = (await Promise.all(contenders.map((event) => storage.saveEvents([event])))).flat();
        const winners = results.filter((r) => r.status === 'accepted');
        expect(winners).toHaveLength(1);
        const winner = winners[0]!.id;
        for (const result of results) {
          if (result.status !== 'accepted') expect(result).toMatchObject({ status: 'conflict', head: { eventId: winner } });
        }
        base = winner;
      }
      expect(await storage.countEvents()).toBe(3);
    });

    it('stores an event once when the same id is pushed concurrently', async () => {
      const event = makeEvent({ documentId: 'a' });
      const results = (await Promise.all(Array.from({ length: 16 }, () => storage.saveEvents([event])))).flat();
      const first = results.find((r) => r.status === 'accepted');
      expect(results.filter((r) => r.status === 'accepted')).toHaveLength(1);
      expect(results.filter((r) => r.status === 'duplicate')).toEqual(
        Array.from({ length: 15 }, () => ({ id: event.id, status: 'duplicate', seq: (first as { seq: number }).seq })),
      );
      expect(await storage.countEvents()).toBe(1);
    });

    it('gives concurrent batches distinct, increasing sequences', async () => {
      const batches = Array.from({ length: 12 }, (_, i) => {
        const e1 = makeEvent({ documentId: `doc-${i}` });
        const e2 = makeEvent({ documentId: `doc-${i}`, base: e1.id });
        return [e1, e2, makeEvent({ documentId: `other-${i}` })];
      });
      const results = await Promise.all(batches.map((batch) => storage.saveEvents(batch)));
      const seqs = results.flatMap((batch) => {
        const batchSeqs = batch.map(acceptedSeq);
        expect(batchSeqs).toEqual([...batchSeqs].sort((x, y) => x - y)); // in order within a call
        return batchSeqs;
      });
      expect(new Set(seqs).size).toBe(36);
      const all = await storage.getEventsAfter(0);
      expect(all.map((e) => e.seq)).toEqual([...seqs].sort((x, y) => x - y));
      expect(await storage.getLatestSequence()).toBe(Math.max(...seqs));
    });

    describe('scoped reads', () => {
      /** Reads one page and holds it to the model; returns it. */
      async function expectPage(history: ScopedHistory, checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
        const page = await storage.getScopedChanges(checkpoint, query);
        expect(summary(page), `from ${checkpoint}: ${JSON.stringify(query)}`).toEqual(history.page(checkpoint, query));
        return page;
      }
      const heldAt = (scope: ScopeSelector | null, through: number) => ({ scope: parseScope(scope), through });

      it('reads only the heads in scope, in order, in pages bounded by count and by bytes, with the checkpoint moving on', async () => {
        const h = new ScopedHistory(storage);
        await h.write('a1', { crewId: 'a', text: 'x'.repeat(100) });
        await h.write('b1', { crewId: 'b' });
        await h.write('n1', { crewId: 'a' }, 'notes');
        await h.write('a2', { crewId: 'a', text: 'y'.repeat(300) });
        await h.write('m1', { region: 'a' });
        await h.write('a3', { crewId: 'a' });
        await h.write('b2', { crewId: 'b', text: 'z'.repeat(1000) });
        const inScope = ['a1', 'a2', 'a3'].map((id) => h.head(id)!);

        const all = await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }));
        expect(withoutTime(all)).toEqual(inScope.map((w) => stored(w.event, w.seq)));
        expect(all.some((change) => 'leave' in change)).toBe(false);
        expect(all.through).toBe(h.latest());
        expect(all.cutByBytes ?? false).toBe(false);

        // By count: a full page moves the checkpoint to its last change; the last page to the latest sequence.
        const first = await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }, { limit: 2 }));
        expect(ids(first)).toEqual([inScope[0]!.event.id, inScope[1]!.event.id]);
        expect(first.through).toBe(inScope[1]!.seq);
        const second = await expectPage(h, first.through, scopedQuery(0, { crewId: 'a' }, { limit: 2 }));
        expect(ids(second)).toEqual([inScope[2]!.event.id]);
        expect(second.through).toBe(h.latest());

        // By bytes: what fits, a document larger than the bound alone, marked as cut while more follows.
        const maxBytes = documentBytes(inScope[0]!.event.data) + 10;
        const seen: string[] = [];
        let checkpoint = 0;
        const cuts: boolean[] = [];
        for (;;) {
          const page = await expectPage(h, checkpoint, scopedQuery(0, { crewId: 'a' }, { maxBytes }));
          seen.push(...ids(page));
          cuts.push(page.cutByBytes ?? false);
          expect(page.through).toBeGreaterThanOrEqual(checkpoint);
          checkpoint = page.through;
          if (!page.cutByBytes) break;
        }
        expect(seen).toEqual(inScope.map((w) => w.event.id));
        expect(cuts).toEqual([true, true, false]);
        expect(checkpoint).toBe(h.latest());

        // Nothing in scope: an empty page that still moves the checkpoint past what it looked at.
        const none = await expectPage(h, 0, scopedQuery(0, { crewId: 'nobody' }));
        expect([...none]).toEqual([]);
        expect(none.through).toBe(h.latest());
        expect((await storage.getScopedChanges(0, scopedQuery(0, { crewId: 'a' }, { limit: 0 }))).through).toBe(0);
        // No scope at all: every head of the collection.
        expect(ids(await expectPage(h, 0, scopedQuery(0, null)))).toEqual(['a1', 'b1', 'a2', 'm1', 'a3', 'b2'].map((id) => h.idOf(id)));
      });

      it('catches an unchanged scope up: changes and deletes in scope, leaves for documents that moved out, nothing for documents never in it', async () => {
        const h = new ScopedHistory(storage);
        await h.write('a1', { crewId: 'a' });
        await h.write('a2', { crewId: 'a' });
        await h.write('b1', { crewId: 'b' });
        await h.write('gone', { crewId: 'a' });
        await h.write('was', { crewId: 'b' });
        await h.remove('was');
        const synced = (await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }))).through;

        await h.write('a1', { crewId: 'b' }); // moved out
        await h.write('b1', { crewId: 'c' }); // never in scope, changed
        await h.write('a2', { crewId: 'a', v: 2 }); // changed in scope
        await h.write('a4', { crewId: 'a' }); // new in scope
        await h.remove('gone'); // deleted in scope
        await h.write('x1', { crewId: 'x' }); // new, never in scope
        await h.write('was', { crewId: 'x' }, 'todos', 'insert'); // deleted before, back out of scope

        const page = await expectPage(h, synced, scopedQuery(synced, { crewId: 'a' }));
        expect(page.map((change) => [change.documentId, change.op, change.leave === true])).toEqual([
          ['a1', 'update', true],
          ['a2', 'update', false],
          ['a4', 'insert', false],
          ['gone', 'delete', false],
        ]);
        // A leave is the head event itself, marked.
        expect(withoutTime([page[0]!])).toEqual([{ ...stored(h.head('a1')!.event, h.head('a1')!.seq), leave: true }]);
        expect(page.through).toBe(h.latest());
        // Caught up: nothing more, and the checkpoint stays.
        const after = await expectPage(h, page.through, scopedQuery(page.through, { crewId: 'a' }));
        expect([...after]).toEqual([]);
        expect(after.through).toBe(page.through);
      });

      it('on a scope change sends only the difference: documents new to the reader and changes since, not those it held in both scopes', async () => {
        const h = new ScopedHistory(storage);
        await h.write('an', { crew: 'a', region: 'n' }); // held in both
        await h.write('as', { crew: 'a', region: 's' }); // new scope only: sent
        await h.write('bn', { crew: 'b', region: 'n' }); // old scope only: the reader drops it itself
        await h.write('bs', { crew: 'b', region: 's' }); // neither
        await h.write('cn', { crew: 'a', region: 'n' }); // held in both, then moves out of the new scope
        await h.write('ds', { crew: 'a', region: 's' }); // new scope only, moves out before it was sent: a leave all the same
        const old = (await expectPage(h, 0, scopedQuery(0, { region: 'n' }))).through;

        await h.write('an2', { crew: 'a', region: 'n' }); // new in both
        await h.write('cn', { crew: 'c', region: 'n' });
        await h.write('ds', { crew: 'c', region: 's' });
        await h.write('bn', { crew: 'b', region: 'n', v: 2 });

        const query = scopedQuery(0, { crew: 'a' }, { held: heldAt({ region: 'n' }, old) });
        const page = await expectPage(h, 0, query);
        expect(page.map((change) => [change.documentId, change.leave === true])).toEqual([
          ['as', false],
          ['an2', false],
          ['cn', true],
          // A version of it before its head was in the new scope: the reader might hold it (from a live message, or as
          // its own write), so it is told to drop it; a leave for a document it does not hold costs it nothing.
          ['ds', true],
        ]);
        // In pages of one, the same rows.
        const rows: string[] = [];
        for (let checkpoint = 0; ; ) {
          const one = await expectPage(h, checkpoint, { ...query, limit: 1 });
          rows.push(...one.map((change) => change.documentId));
          checkpoint = one.through;
          if (one.length < 1) break;
        }
        // Paged, the same rows, and a leave for `ds` too: once the checkpoint passed the version it had at the
        // old checkpoint, the reader may have been sent it (it would have, had it not moved before it was read).
        expect(rows).toEqual(['as', 'an2', 'cn', 'ds']);
      });

      it('sends the leave of a document that moved out while a catch-up was cut into pages', async () => {
        // The reader holds the scope through `synced`, and keeps holding it there until a page ends its catch-up.
        const h = new ScopedHistory(storage);
        await h.write('d1', { crewId: 'a' });
        await h.write('d2', { crewId: 'a' });
        const reader = new ScopedReader(storage, parseScope({ crewId: 'a' }));
        await reader.finish();
        await h.write('d1', { crewId: 'b' }); // out of scope: the version after the checkpoint the next page starts from...
        await h.write('d2', { crewId: 'a', n: 1 });
        await h.write('d1', { crewId: 'c' }); // ...and out again
        expect(await reader.page(1)).toBe(false);
        expect([...reader.documents.keys()]).toEqual(['d1', 'd2']);
        expect(await reader.page(1)).toBe(false);
        expect([...reader.documents.keys()]).toEqual(['d2']);
        await reader.finish();

        // The same on a scope change: a document sent in the first pages, then moved out, is left.
        await h.write('e1', { crewId: 'x', region: 's' });
        await h.write('e2', { crewId: 'x', region: 's' });
        await reader.finish();
        reader.changeScope(parseScope({ region: 's' }));
        await h.write('f1', { crewId: 'x', region: 's' });
        expect(await reader.page(1)).toBe(false); // e1, sent: the old scope did not hold it
        await h.write('e1', { crewId: 'x', region: 'n' });
        await reader.finish();
        expect([...reader.documents.keys()].sort()).toEqual(['e2', 'f1']);
      });

      it('still sends a leave when compaction removed the version the reader held', async () => {
        const h = new ScopedHistory(storage);
        await h.write('a1', { crewId: 'a' });
        await h.write('a2', { crewId: 'a' });
        await h.write('b1', { crewId: 'b' });
        const synced = (await expectPage(h, 0, scopedQuery(0, { crewId: 'a' }))).through;
        await h.write('a1', { crewId: 'b' });
        await h.write('a1', { crewId: 'c' });
        await h.write('x1', { crewId: 'x' });
        await h.compact(h.latest() + 1);
        expect(await storage.getEventsAfter(0)).toHaveLength(4);

        const page = await expectPage(h, synced, scopedQuery(synced, { crewId: 'a' }));
        expect(page.map((change) => [change.documentId, change.leave === true])).toEqual([['a1', true]]);
        // A document whose version at the checkpoint is gone may or may not have been held: it gets a leave too.
        await h.write('b1', { crewId: 'b', v: 2 });
        await h.compact(h.latest() + 1);
        const more = await expectPage(h, synced, scopedQuery(synced, { crewId: 'a' }));
        expect(more.map((change) => [change.documentId, change.leave === true])).toEqual([['a1', true], ['b1', true]]);
        // A reader that held nothing yet gets no leaves, compacted or not.
        expect(ids(await expectPage(h, 0, scopedQuery(0, { crewId: 'a' })))).toEqual([h.idOf('a2')]);
      });

      it('compares as matchesScope does: JSON types strictly, missing fields match nothing, strings by code point, numbers by value', async () => {
        const h = new ScopedHistory(storage);
        const values: Record<string, unknown> = {
          str1: '1', num1: 1, bool: true, strTrue: 'true', missing: undefined, nul: null, list: [1], object: { x: 1 },
          half: 1.5, negative: -0.5, huge: 2 ** 60, exp: 1e21, tiny: 1e-7, empty: '', a: 'a', ab: 'ab', highBmp: '\uffff',
          privateUse: '\ue000', emoji: '😀', clef: '𝄞', accent: 'é', no: false,
        };
        for (const [id, v] of Object.entries(values)) await h.write(id, v === undefined ? { other: 1 } : { v });
        const cases: [ScopeSelector, string[] | undefined][] = [
          [{ v: '1' }, ['str1']],
          [{ v: 1 }, ['num1']],
          [{ v: true }, ['bool']],
          [{ v: false }, ['no']],
          [{ v: 'true' }, ['strTrue']],
          [{ v: { $in: ['1', true, 1.5] } }, ['str1', 'bool', 'half']],
          [{ v: { $gt: '\uffff' } }, ['emoji', 'clef']], // above every BMP character, as UTF-8 and code points order them
          [{ v: { $lt: '😀' } }, ['str1', 'strTrue', 'empty', 'a', 'ab', 'highBmp', 'privateUse', 'clef', 'accent']],
          [{ v: { $gte: 'a', $lt: 'b' } }, ['a', 'ab']],
          [{ v: { $gt: '' } }, undefined],
          [{ v: { $gte: 1 } }, ['num1', 'half', 'huge', 'exp']],
          [{ v: { $lt: 1 } }, ['negative', 'tiny']],
          [{ v: { $gt: 2 ** 60 - 1e5, $lte: 1e21 } }, ['huge', 'exp']],
          [{ v: { $eq: 1e-7 } }, ['tiny']],
          [{ other: 1, v: 1 }, []],
        ];
        for (const [selector, expected] of cases) {
          const scope = parseScope(selector);
          const model = h.written.filter((w) => matchesScope(scope, w.event.data)).map((w) => w.event.documentId);
          if (expected) expect(model, JSON.stringify(selector)).toEqual(expected); // the model is matchesScope
          const page = await expectPage(h, 0, scopedQuery(0, selector));
          expect(page.map((change) => change.documentId), JSON.stringify(selector)).toEqual(model);
        }
      });

      it('indexes scope fields idempotently, and reads the same with the indexes as without', async () => {
        const h = new ScopedHistory(storage);
        for (let i = 0; i < 30; i++) await h.write(`d${i % 12}`, { crewId: `c${i % 3}`, region: i % 2 ? 'n' : 's', n: i });
        const queries = [
          scopedQuery(0, { crewId: 'c1' }),
          scopedQuery(0, { crewId: { $in: ['c0', 'c2'] }, region: 'n' }, { limit: 3 }),
          scopedQuery(10, { crewId: 'c1' }),
          scopedQuery(10, { crewId: 'c2', n: { $gt: 5 } }, { maxBytes: 40 }),
          scopedQuery(0, { region: 's' }, { held: heldAt({ crewId: 'c0' }, 12) }),
        ];
        const before = await Promise.all(queries.map((query) => storage.getScopedChanges(query.held.through, query)));
        await storage.indexScopeFields({ todos: ['crewId', 'region'], notes: ['crewId'], 'odd-name$1': ['x'] });
        await storage.indexScopeFields({ todos: ['crewId', 'region'], notes: ['crewId'] });
        await Promise.all([storage.indexScopeFields({ todos: ['crewId', 'n'] }), storage.indexScopeFields({ todos: ['crewId'] })]);
        await storage.indexScopeFields({});
        for (const [i, query] of queries.entries()) {
          const page = await expectPage(h, query.held.through, query);
          expect(summary(page)).toEqual(summary(before[i]!));
        }
        await expect(storage.indexScopeFields({ todos: ["x') ; DROP TABLE heads; --"] })).rejects.toThrow();
        expect(await storage.countEvents()).toBe(30);
      });

      it('answers as the model built on matchesScope does, for random documents, scopes, checkpoints, compaction and pages (randomized)', async () => {
        await fc.assert(
          fc.asyncProperty(scopedScenario, async ({ steps, queries, index }) => {
            const under = await makeStorage();
            try {
              await under.storage.init();
              if (index) await under.storage.indexScopeFields({ todos: [...SCOPE_FIELDS] });
              const h = new ScopedHistory(under.storage);
              await playSteps(h, steps);
              const seqs = [0, ...h.written.map((w) => w.seq)];
              for (const { checkpointPick, heldPick, scope, heldScope, limit, maxBytes } of queries) {
                const checkpoint = seqs[checkpointPick % seqs.length]!;
                const query: ScopedQuery = {
                  collection: 'todos',
                  scope: parseScope(scope),
                  held: heldPick === null ? { scope: parseScope(scope), through: checkpoint } : { scope: parseScope(heldScope), through: seqs[heldPick % seqs.length]! },
                  limit,
                  maxBytes,
                };
                // Every page from the checkpoint to the end, each as the model answers it.
                for (let cursor = checkpoint, pages = 0; ; pages++) {
                  const page = await under.storage.getScopedChanges(cursor, query);
                  expect(summary(page), `page ${pages} from ${cursor}: ${JSON.stringify(query)}`).toEqual(h.page(cursor, query));
                  if (page.through === cursor && page.length === 0) break;
                  cursor = page.through;
                  if (!page.cutByBytes && (limit === undefined || page.length < limit)) break;
                }
              }
            } finally {
              await under.cleanup();
            }
          }),
          { seed: FC_SEED, numRuns: 30, endOnFailure: true },
        );
      }, 180_000);

      it('brings a paging reader to exactly the documents in its scope, with writes, compaction and scope changes between its pages (randomized)', async () => {
        await fc.assert(
          fc.asyncProperty(readerScenario, async ({ rounds, index }) => {
            const under = await makeStorage();
            try {
              await under.storage.init();
              if (index) await under.storage.indexScopeFields({ todos: [...SCOPE_FIELDS] });
              const h = new ScopedHistory(under.storage);
              const reader = new ScopedReader(under.storage, parseScope(rounds[0]!.scope));
              for (const round of rounds) {
                await playSteps(h, round.steps);
                if (round.read) await reader.page(round.read.limit, round.read.maxBytes);
                if (round.changeScope) {
                  await reader.finish();
                  reader.changeScope(parseScope(round.scope));
                }
              }
              await reader.finish();
              const expected = new Map<string, Data>();
              for (const w of h.written) {
                if (w.event.collection !== 'todos' || h.head(w.event.documentId) !== w) continue;
                if (w.event.op !== 'delete' && matchesScope(reader.scope, w.event.data)) expected.set(w.event.documentId, w.event.data);
              }
              const json = (documents: Map<string, Data>) =>
                JSON.parse(JSON.stringify(Object.fromEntries([...documents].sort(([a], [b]) => (a < b ? -1 : 1))))) as unknown;
              expect(json(reader.documents)).toEqual(json(expected));
            } finally {
              await under.cleanup();
            }
          }),
          { seed: FC_SEED, numRuns: 60, endOnFailure: true },
        );
      }, 180_000);
    });
  });
}
