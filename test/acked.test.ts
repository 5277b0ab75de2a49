/**
 * Acknowledged pushes are kept as one page per batch and folded into
 * per-document shadows while the client is idle. Whatever the moment of a
 * restart (before the fold, after it, after a newer version replaced an
 * acknowledged one), the next edit of a document is based on the newest
 * server version this client knows.
 *
 * Also: a page is never overwritten by a later batch's page (a batch whose
 * first entry got a conflict and survived a crash leads the next batch
 * again), and a conflict round interrupted by the app's own write leaves the
 * acknowledged version in place as the next round's base.
 */
import type { RxDatabase } from 'rxdb';
import { afterEach, describe, expect, it } from 'vitest';
import { MetaStore } from '../src/client/meta-store.js';
import { Replicator, SHADOWS_AT_ONCE } from '../src/client/replicator.js';
import { createLogger } from '../src/shared/logger.js';
import type { DocumentHead, PushOutcome, RemoteEvent, SyncEvent } from '../src/shared/protocol/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { merge, strategyFor, type Conflict } from '../src/client/strategies/index.js';
import { openDatabase, uniqueName } from './helpers.js';

type Db = Awaited<ReturnType<typeof openDatabase>>;
const logger = createLogger({ enabled: false, level: 'error' }, 'test');
const opened: Db[] = [];

afterEach(async () => {
  await Promise.all(opened.splice(0).map((db) => db.close()));
});

/** A database with the replication core on it, as the plugin builds it, without a transport. */
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

/** Logs, "pushes" and acknowledges everything pending, the server giving sequences from `firstSeq`. */
async function pushAll(replicator: Replicator, firstSeq: number) {
  const batch = await replicator.takeBatch(500);
  await replicator.applyPushResults(batch, batch.map((_, i) => firstSeq + i));
  return batch.map((entry) => entry.event);
}

async function logAll(db: Db, replicator: Replicator) {
  const docs = await db.todos.find().exec();
  await replicator.recordLocalChanges('todos', docs.map((doc) => doc.id));
}

let fillers = 0;
/** Documents with these ids, and enough others that a push of them is acknowledged as a page. */
const withFillers = (ids: readonly string[]) => [
  ...ids.map((id) => ({ id, title: id, done: false })),
  ...Array.from({ length: SHADOWS_AT_ONCE }, () => ({ id: `filler${fillers++}`, title: 'filler', done: false })),
];
const eventOf = (events: readonly SyncEvent[], documentId: string) => events.find((event) => event.documentId === documentId)!;

/** The server's head of a document, written by another client. */
const otherHead = (documentId: string, seq: number, eventId: string, data: Record<string, unknown>): DocumentHead => ({
  collection: 'todos',
  documentId,
  seq,
  eventId,
  data,
  deleted: false,
  hlc: formatHlc({ millis: 1, counter: 0, node: 'other' }),
  clientId: 'other',
});
const d0ElsewhereHead = otherHead('d0', 1, 'other-insert-d0', { id: 'd0', title: 'from elsewhere', done: false });

describe('acknowledged versions', () => {
  it('are one stored page per batch, read back after a restart as the base of the next edit', async () => {
    const name = uniqueName('acked');
    const first = await open(name);
    await first.db.todos.bulkInsert(withFillers(['d1', 'd2', 'd3']));
    await logAll(first.db, first.replicator);
    const pushed = await pushAll(first.replicator, 1);
    expect([...(await first.meta.getAll('acked')).keys()]).toHaveLength(1);
    expect(await first.meta.getAll('shadow')).toEqual(new Map());
    expect(first.replicator.pending.size).toBe(0);
    await first.close();

    const second = await open(name);
    await (await second.db.todos.findOne('d2').exec())!.patch({ title: 'edited' });
    await second.replicator.recordLocalChanges('todos', ['d2']);
    const [entry] = second.replicator.pending.all();
    expect(entry!.event).toMatchObject({
      op: 'update',
      baseEventId: eventOf(pushed, 'd2').id,
      patch: [{ op: 'replace', path: '/title', value: 'edited' }],
    });
  });

  it('of a small batch (an app editing a document at a time) are kept as shadows at once, with no page', async () => {
    const name = uniqueName('small');
    const first = await open(name);
    await first.db.todos.insert({ id: 'one', title: 'one', done: false });
    await logAll(first.db, first.replicator);
    const [pushed] = await pushAll(first.replicator, 1);
    expect((await first.meta.getAll('acked')).size).toBe(0);
    expect((await first.meta.getAll('shadow')).get('shadow|todos|one')).toMatchObject({ eventId: pushed!.id, seq: 1 });
  });

  it('fold into per-document shadows, one page at a time, and the page is gone', async () => {
    const name = uniqueName('fold');
    const first = await open(name);
    await first.db.todos.bulkInsert(withFillers(['d1', 'd2']));
    await logAll(first.db, first.replicator);
    const pushed = await pushAll(first.replicator, 1);
    const secondBatch = withFillers(['d3']);
    await first.db.todos.bulkInsert(secondBatch);
    await first.replicator.recordLocalChanges('todos', secondBatch.map((doc) => doc.id));
    const pushedLater = await pushAll(first.replicator, 1000);
    expect((await first.meta.getAll('acked')).size).toBe(2);

    expect(await first.replicator.foldAcked()).toBe(true);
    expect((await first.meta.getAll('acked')).size).toBe(1);
    expect(await first.replicator.foldAcked()).toBe(true);
    expect(await first.replicator.foldAcked()).toBe(false);
    expect((await first.meta.getAll('acked')).size).toBe(0);
    const shadows = await first.meta.getAll<{ eventId: string; seq: number }>('shadow');
    expect(shadows.size).toBe(pushed.length + pushedLater.length);
    expect(shadows.get('shadow|todos|d3')).toMatchObject({ eventId: eventOf(pushedLater, 'd3').id });
    await first.close();

    const second = await open(name);
    await (await second.db.todos.findOne('d1').exec())!.patch({ done: true });
    await second.replicator.recordLocalChanges('todos', ['d1']);
    expect(second.replicator.pending.all()[0]!.event).toMatchObject({ op: 'update', baseEventId: eventOf(pushed, 'd1').id, patch: [{ op: 'replace', path: '/done', value: true }] });
  });

  it('fold with one read of each shadow record, not one for the comparison and another for the write', async () => {
    const { db, meta, replicator } = await open(uniqueName('foldreads'));
    await db.todos.bulkInsert(withFillers(['d1', 'd2']));
    await logAll(db, replicator);
    const pushed = await pushAll(replicator, 1);
    const instance = (meta as unknown as { instance: { findDocumentsById(ids: string[], deleted: boolean): Promise<unknown[]> } }).instance;
    const findDocumentsById = instance.findDocumentsById.bind(instance);
    const read: string[] = [];
    instance.findDocumentsById = (ids, deleted) => {
      read.push(...ids);
      return findDocumentsById(ids, deleted);
    };
    expect(await replicator.foldAcked()).toBe(true);
    expect(read.filter((id) => id.startsWith('shadow|'))).toHaveLength(pushed.length);
    expect(new Set(read).size).toBe(read.length);
    expect((await meta.getAll('shadow')).size).toBe(pushed.length);
  });

  it('give way to a newer server version, also when read back after a restart before the fold', async () => {
    const name = uniqueName('newer');
    const first = await open(name);
    await first.db.todos.bulkInsert(withFillers(['d1', 'd2']));
    await logAll(first.db, first.replicator);
    await pushAll(first.replicator, 1);
    // Another client deletes d1 (sequence 3000): this client keeps that version, not the acknowledged one.
    const removal: RemoteEvent = { id: 'other-delete-0001', collection: 'todos', documentId: 'd1', op: 'delete', data: { id: 'd1', title: 't1', done: false }, hlc: '999999999999999-000000-other', seq: 3000, clientId: 'other' };
    await first.replicator.applyRemote([removal], 'pull', { collections: ['todos'], seq: 3000 });
    expect(await first.db.todos.findOne('d1').exec()).toBeNull();
    const pages = [...(await first.meta.getAll<{ versions: [string, string, unknown][] }>('acked')).values()];
    expect(pages).toHaveLength(1);
    const documentIds = pages[0]!.versions.map(([, documentId]) => documentId);
    expect(documentIds).toContain('d2');
    expect(documentIds).not.toContain('d1');
    await first.close();

    // Created again here after the restart: an insert on the deletion, not an update of the acknowledged version.
    const second = await open(name);
    await second.db.todos.insert({ id: 'd1', title: 'again', done: false });
    await second.replicator.recordLocalChanges('todos', ['d1']);
    expect(second.replicator.pending.all()[0]!.event).toMatchObject({ op: 'insert', baseEventId: 'other-delete-0001' });
  });

  it('of a batch whose first entry is still pending after a crash are never overwritten by the next batch', async () => {
    const name = uniqueName('ackcoll');
    const first = await open(name);
    const firstDocs = withFillers(['d0', 'd1', 'd2']);
    await first.db.todos.bulkInsert(firstDocs);
    await first.replicator.recordLocalChanges('todos', firstDocs.map((doc) => doc.id));
    const batch = await first.replicator.takeBatch(500);
    expect(batch.map((e) => e.event.documentId)).toEqual(firstDocs.map((doc) => doc.id));
    const pushedD1 = batch[1]!.event.id;
    // The process dies while settling the conflict, after the acknowledgements were written.
    (first.replicator as unknown as { resolveDocument: () => Promise<void> }).resolveDocument = async () => {
      throw new Error('process died');
    };
    const results: PushOutcome[] = batch.map((_, i) => (i === 0 ? { status: 'conflict', head: d0ElsewhereHead } : 1 + i));
    await expect(first.replicator.applyPushResults(batch, results)).rejects.toThrow('process died');
    await first.close();

    // After the restart, d0's entry is still the oldest, and the app wrote d3.
    const second = await open(name);
    expect(second.replicator.pending.all().map((e) => e.event.documentId)).toEqual(['d0']);
    const laterDocs = withFillers(['d3']);
    await second.db.todos.bulkInsert(laterDocs);
    await second.replicator.recordLocalChanges('todos', laterDocs.map((doc) => doc.id));
    const batch2 = await second.replicator.takeBatch(500);
    expect(batch2.map((e) => e.event.documentId)).toEqual(['d0', ...laterDocs.map((doc) => doc.id)]);
    await second.replicator.applyPushResults(
      batch2,
      batch2.map((_, i) => (i === 0 ? { status: 'conflict', head: d0ElsewhereHead } : 1000 + i)),
    );
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

  it('stay the base of a conflict settled again because the app wrote during the first round', async () => {
    // The merge's base is lost if the first, interrupted round already dropped the acknowledged version.
    const db = await openDatabase(uniqueName('refused'));
    opened.push(db);
    const meta = await MetaStore.open(db as unknown as RxDatabase);
    const bases: (Conflict['base'])[] = [];
    let round = 0;
    const resolver = async (conflict: Conflict) => {
      bases.push(conflict.base);
      // The app writes the document while the first round is being settled.
      if (round++ === 0) await (await db.todos.findOne('d').exec())!.patch({ priority: 1 });
      const resolution = merge(conflict);
      if (resolution.action === 'write') return resolution.data;
      if (resolution.action === 'keep-remote') return conflict.remote!.data;
      return conflict.local.data;
    };
    const replicator = new Replicator(db as unknown as RxDatabase, meta, () => strategyFor(resolver), logger);
    await replicator.load();

    // d is created here and acknowledged (as sequence 1) in a batch large enough to be kept as a page.
    const created = withFillers(['d']);
    await db.todos.bulkInsert(created);
    await replicator.recordLocalChanges('todos', created.map((doc) => doc.id));
    const batch = await replicator.takeBatch(500);
    await replicator.applyPushResults(batch, batch.map((_, i) => 1 + i));
    expect((await meta.getAll('acked')).size).toBe(1);

    // This client edits the title; another client meanwhile set done (sequence 2).
    await (await db.todos.findOne('d').exec())!.patch({ title: 'mine' });
    await replicator.recordLocalChanges('todos', ['d']);
    const [edit] = await replicator.takeBatch(10);
    await replicator.applyPushResults([edit!], [{
      status: 'conflict',
      head: otherHead('d', 5000, 'other-done', { id: 'd', title: 'd', done: true }),
    }]);

    expect(round).toBe(2);
    expect(bases[0]?.data).toEqual({ id: 'd', title: 'd', done: false });
    expect(bases[1]?.data).toEqual({ id: 'd', title: 'd', done: false });
    // Both edits survive the merge: the title from here, done from the other client.
    const doc = (await db.todos.findOne('d').exec())!.toJSON();
    expect(doc).toMatchObject({ title: 'mine', done: true, priority: 1 });
  });
});
