/** Reading: events after a checkpoint, changes as heads, heads by id, compaction, and pages bounded in bytes. */
import fc from 'fast-check';
import { beforeEach, expect, it } from 'vitest';
import type { DocumentHead, StoredEvent } from '../../shared/protocol/index.js';
import { MemorySyncStorage } from '../../server/storage/memory.js';
import { documentBytes } from '../../server/storage/size.js';
import type { IncomingEvent, SyncStorage } from '../../server/storage/types.js';
import { FC_SEED, ids, makeEvent, seededRandom, stored, withoutTime, type Conformance } from '../harness.js';

export function readTests(t: Conformance): void {
  let storage: SyncStorage;
  beforeEach(() => {
    storage = t.storage;
  });
  const { saveAccepted } = t;

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
        const under = await t.open();
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
}
