/**
 * Review: an acknowledged batch's page is named `acked|<key of batch[0]>`.
 * When batch[0] is a conflicting entry that is still in the log after a
 * restart (the process died after applyPushResults wrote the acked page but
 * before resolveDocument wrote the settled conflict), the next batch again
 * starts with that entry: its acked page gets the same id and overwrites the
 * first page, so the acknowledged versions of the first batch are lost.
 */
import type { RxDatabase } from 'rxdb';
import { afterEach, describe, expect, it } from 'vitest';
import { MetaStore } from '../src/client/meta-store.js';
import { Replicator } from '../src/client/replicator.js';
import { strategyFor } from '../src/client/strategies/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { createLogger } from '../src/shared/logger.js';
import type { DocumentHead, PushResult } from '../src/shared/protocol.js';
import { openDatabase, uniqueName } from './helpers.js';

type Db = Awaited<ReturnType<typeof openDatabase>>;
const logger = createLogger({ enabled: false, level: 'error' }, 'test');
const opened: Db[] = [];

afterEach(async () => {
  await Promise.all(opened.splice(0).map((db) => db.close()));
});

async function open(name: string) {
  const db = await openDatabase(name);
  opened.push(db);
  const meta = await MetaStore.open(db as unknown as RxDatabase);
  const replicator = new Replicator(db as unknown as RxDatabase, meta, () => strategyFor('last-write-wins'), logger);
  await replicator.load();
  const close = async () => {
    opened.splice(opened.indexOf(db), 1);
    await db.close();
  };
  return { db, meta, replicator, close };
}

const otherHead: DocumentHead = {
  collection: 'todos',
  documentId: 'd0',
  seq: 1,
  eventId: 'other-insert-d0',
  data: { id: 'd0', title: 'from elsewhere', done: false },
  deleted: false,
  hlc: formatHlc({ millis: 1, counter: 0, node: 'other' }),
  clientId: 'other',
};

describe('review: acked page ids', () => {
  it('a batch led by an entry still pending after a crash does not overwrite the earlier acked page', async () => {
    const name = uniqueName('ackcoll');
    const first = await open(name);
    await first.db.todos.bulkInsert(['d0', 'd1', 'd2'].map((id) => ({ id, title: id, done: false })));
    await first.replicator.recordLocalChanges('todos', ['d0', 'd1', 'd2']);
    const batch = await first.replicator.takeBatch(500);
    expect(batch.map((e) => e.event.documentId)).toEqual(['d0', 'd1', 'd2']);
    const pushedD1 = batch[1]!.event.id;
    // The process dies while settling the conflict, after the acknowledgements were written.
    (first.replicator as unknown as { resolveDocument: () => Promise<void> }).resolveDocument = async () => {
      throw new Error('process died');
    };
    const results: PushResult[] = [
      { id: batch[0]!.event.id, status: 'conflict', head: otherHead },
      { id: batch[1]!.event.id, status: 'accepted', seq: 2 },
      { id: batch[2]!.event.id, status: 'accepted', seq: 3 },
    ];
    await expect(first.replicator.applyPushResults(batch, results)).rejects.toThrow('process died');
    await first.close();

    // After the restart, d0's entry is still the oldest, and the app wrote d3.
    const second = await open(name);
    expect(second.replicator.pending.all().map((e) => e.event.documentId)).toEqual(['d0']);
    await second.db.todos.insert({ id: 'd3', title: 'd3', done: false });
    await second.replicator.recordLocalChanges('todos', ['d3']);
    const batch2 = await second.replicator.takeBatch(500);
    expect(batch2.map((e) => e.event.documentId)).toEqual(['d0', 'd3']);
    await second.replicator.applyPushResults(batch2, [
      { id: batch2[0]!.event.id, status: 'conflict', head: otherHead },
      { id: batch2[1]!.event.id, status: 'accepted', seq: 4 },
    ]);
    // Idle: everything acknowledged is folded.
    while (await second.replicator.foldAcked());
    await second.close();

    // d1's next edit is based on the version the server acknowledged.
    const third = await open(name);
    await (await third.db.todos.findOne('d1').exec())!.patch({ title: 'edited' });
    await third.replicator.recordLocalChanges('todos', ['d1']);
    const entry = third.replicator.pending.forDocument('todos', 'd1')[0]!;
    expect(entry.event).toMatchObject({ op: 'update', baseEventId: pushedD1 });
  });
});
