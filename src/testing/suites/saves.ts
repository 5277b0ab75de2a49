/** Saving: sequences, idempotent retries, conflicts on stale bases, deletes, and concurrent pushes. */
import { beforeEach, expect, it } from 'vitest';
import type { DocumentHead } from '../../shared/protocol/index.js';
import type { SyncStorage } from '../../server/storage/types.js';
import { acceptedSeq, ids, makeEvent, stored, withoutTime, type Conformance } from '../harness.js';

export function saveTests(t: Conformance): void {
  let storage: SyncStorage;
  beforeEach(() => {
    storage = t.storage;
  });
  const { saveAccepted } = t;

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
}
