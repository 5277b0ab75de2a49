/**
 * A bulk of the app's writes is logged with the states its change events
 * carry, without reading the documents back, unless the plugin wrote to the
 * collection after the events were noted: then a noted state may be one the
 * plugin's write replaced, and logging it would push it over that write.
 */
import { firstValueFrom, type Observable } from 'rxjs';
import type { RxChangeEventBulk, RxDatabase } from 'rxdb';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MetaStore } from '../src/client/meta-store.js';
import { Replicator, type LocalWrites } from '../src/client/replicator.js';
import { strategyFor } from '../src/client/strategies/index.js';
import { createLogger } from '../src/shared/logger.js';
import type { RemoteEvent } from '../src/shared/protocol/index.js';
import { openDatabase, uniqueName } from './helpers.js';

type Db = Awaited<ReturnType<typeof openDatabase>>;
const logger = createLogger({ enabled: false, level: 'error' }, 'test');
const opened: Db[] = [];

afterEach(async () => {
  vi.restoreAllMocks();
  await Promise.all(opened.splice(0).map((db) => db.close()));
});

async function open() {
  const db = await openDatabase(uniqueName('local-writes'));
  opened.push(db);
  const meta = await MetaStore.open(db as unknown as RxDatabase);
  const replicator = new Replicator(db as unknown as RxDatabase, meta, () => strategyFor('last-write-wins'), logger);
  await replicator.load();
  return { db, replicator };
}

/** The app's next write, as the engine notes it when its change events arrive. */
async function noted(db: Db, replicator: Replicator, write: () => Promise<unknown>): Promise<{ ids: string[]; written: LocalWrites }> {
  const bulk = firstValueFrom(db.todos.eventBulks$ as Observable<RxChangeEventBulk<unknown>>);
  await write();
  const { events } = await bulk;
  return { ids: events.map((event) => event.documentId), written: replicator.localWrites('todos', events as never) };
}

describe("the app's writes", () => {
  it('are logged with the states their change events carry, with no read of the documents', async () => {
    const { db, replicator } = await open();
    const docs = [1, 2, 3].map((i) => ({ id: `d${i}`, title: `title ${i}`, done: i === 2 }));
    const { ids, written } = await noted(db, replicator, () => db.todos.bulkInsert(docs));
    const read = vi.spyOn(db.todos.storageInstance, 'findDocumentsById');
    expect(await replicator.recordLocalChanges('todos', ids, undefined, written)).toBe(3);
    expect(read).not.toHaveBeenCalled();
    expect(replicator.pending.all().map((entry) => [entry.event.op, entry.event.data])).toEqual(docs.map((doc) => ['insert', doc]));
  });

  it('are read back once the plugin wrote to the collection since: a state it replaced is never logged over its write', async () => {
    const { db, replicator } = await open();
    await db.todos.insert({ id: 'd1', title: 'first', done: false });
    await replicator.recordLocalChanges('todos', ['d1']);
    const batch = await replicator.takeBatch(10);
    await replicator.applyPushResults(batch, [1]);

    // The app edits d1; before that write is logged, a later edit from another client arrives and wins.
    const { ids, written } = await noted(db, replicator, () => db.todos.findOne('d1').exec().then((doc) => doc!.patch({ title: 'local' })));
    const remote: RemoteEvent = {
      id: 'other-update-0001',
      collection: 'todos',
      documentId: 'd1',
      op: 'update',
      data: { id: 'd1', title: 'remote', done: true },
      hlc: '999999999999999-000000-other',
      seq: 2,
      clientId: 'other',
    };
    await replicator.applyRemote([remote], 'pull', { collections: ['todos'], seq: 2 });
    const after = (await db.todos.findOne('d1').exec())!.toJSON();
    expect(after).toMatchObject({ title: 'remote', done: true });

    // The logging step of the app's write comes late, with the state its event noted.
    const read = vi.spyOn(db.todos.storageInstance, 'findDocumentsById');
    await replicator.recordLocalChanges('todos', ids, undefined, written);
    expect(read).toHaveBeenCalled();
    // The later write won (last-write-wins), so the app's edit is dropped, and nothing is logged over it.
    expect(replicator.pending.forDocument('todos', 'd1')).toEqual([]);
    expect((await db.todos.findOne('d1').exec())!.title).toBe('remote');
  });
});
