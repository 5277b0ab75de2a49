/**
 * The one suite every SyncStorage passes (memory, SQLite, PostgreSQL). It
 * states the storage contract of src/server/storage/types.ts as tests.
 */
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatHlc } from '../src/shared/hlc.js';
import { MAX_DOCUMENT_ID_BYTES, isClientId, isDocumentId, type DocumentHead, type StoredEvent } from '../src/shared/protocol.js';
import { MemorySyncStorage } from '../src/server/storage/memory.js';
import { documentBytes } from '../src/server/storage/size.js';
import type { IncomingEvent, SaveResult, SyncStorage } from '../src/server/storage/types.js';

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
  });
}
