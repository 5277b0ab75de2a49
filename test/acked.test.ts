/**
 * Acknowledged pushes are kept as one page per batch and folded into
 * per-document shadows while the client is idle. Whatever the moment of a
 * restart (before the fold, after it, after a newer version replaced an
 * acknowledged one), the next edit of a document is based on the newest
 * server version this client knows.
 */
import type { RxDatabase } from 'rxdb';
import { afterEach, describe, expect, it } from 'vitest';
import { MetaStore } from '../src/client/meta-store.js';
import { Replicator } from '../src/client/replicator.js';
import { strategyFor } from '../src/client/strategies/index.js';
import { createLogger } from '../src/shared/logger.js';
import type { RemoteEvent } from '../src/shared/protocol.js';
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
  await replicator.applyPushResults(batch, batch.map((entry, i) => ({ id: entry.event.id, status: 'accepted' as const, seq: firstSeq + i })));
  return batch.map((entry) => entry.event);
}

async function logAll(db: Db, replicator: Replicator) {
  const docs = await db.todos.find().exec();
  await replicator.recordLocalChanges('todos', docs.map((doc) => doc.id));
}

describe('acknowledged versions', () => {
  it('are one stored page per batch, read back after a restart as the base of the next edit', async () => {
    const name = uniqueName('acked');
    const first = await open(name);
    await first.db.todos.bulkInsert([1, 2, 3].map((i) => ({ id: `d${i}`, title: `t${i}`, done: false })));
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
      baseEventId: pushed[1]!.id,
      patch: [{ op: 'replace', path: '/title', value: 'edited' }],
    });
  });

  it('fold into per-document shadows, one page at a time, and the page is gone', async () => {
    const name = uniqueName('fold');
    const first = await open(name);
    await first.db.todos.bulkInsert([1, 2].map((i) => ({ id: `d${i}`, title: `t${i}`, done: false })));
    await logAll(first.db, first.replicator);
    const pushed = await pushAll(first.replicator, 1);
    await first.db.todos.insert({ id: 'd3', title: 't3', done: false });
    await first.replicator.recordLocalChanges('todos', ['d3']);
    await pushAll(first.replicator, 3);
    expect((await first.meta.getAll('acked')).size).toBe(2);

    expect(await first.replicator.foldAcked()).toBe(true);
    expect((await first.meta.getAll('acked')).size).toBe(1);
    expect(await first.replicator.foldAcked()).toBe(true);
    expect(await first.replicator.foldAcked()).toBe(false);
    expect((await first.meta.getAll('acked')).size).toBe(0);
    const shadows = await first.meta.getAll<{ eventId: string; seq: number }>('shadow');
    expect([...shadows.values()].map((shadow) => shadow.seq).sort()).toEqual([1, 2, 3]);
    await first.close();

    const second = await open(name);
    await (await second.db.todos.findOne('d1').exec())!.patch({ done: true });
    await second.replicator.recordLocalChanges('todos', ['d1']);
    expect(second.replicator.pending.all()[0]!.event).toMatchObject({ op: 'update', baseEventId: pushed[0]!.id, patch: [{ op: 'replace', path: '/done', value: true }] });
  });

  it('give way to a newer server version, also when read back after a restart before the fold', async () => {
    const name = uniqueName('newer');
    const first = await open(name);
    await first.db.todos.bulkInsert([1, 2].map((i) => ({ id: `d${i}`, title: `t${i}`, done: false })));
    await logAll(first.db, first.replicator);
    await pushAll(first.replicator, 1);
    // Another client deletes d1 (sequence 3): this client keeps that version, not the acknowledged one.
    const removal: RemoteEvent = { id: 'other-delete-0001', collection: 'todos', documentId: 'd1', op: 'delete', data: { id: 'd1', title: 't1', done: false }, hlc: '999999999999999-000000-other', seq: 3, clientId: 'other' };
    await first.replicator.applyRemote([removal], 'pull', { collections: ['todos'], seq: 3 });
    expect(await first.db.todos.findOne('d1').exec()).toBeNull();
    const pages = [...(await first.meta.getAll<{ versions: [string, string, unknown][] }>('acked')).values()];
    expect(pages.map((page) => page.versions.map(([, documentId]) => documentId))).toEqual([['d2']]);
    await first.close();

    // Created again here after the restart: an insert on the deletion, not an update of the acknowledged version.
    const second = await open(name);
    await second.db.todos.insert({ id: 'd1', title: 'again', done: false });
    await second.replicator.recordLocalChanges('todos', ['d1']);
    expect(second.replicator.pending.all()[0]!.event).toMatchObject({ op: 'insert', baseEventId: 'other-delete-0001' });
  });
});
