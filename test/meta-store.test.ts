/**
 * The plugin's own store keeps ids of at most MAX_STORED_ID characters: a
 * longer id (a document id may have 1024) is stored as its SHA-256, the id
 * itself beside it. Storages that index strings pad every indexed id to the
 * schema's maxLength, so the earlier bound of 2048 made each shadow cost
 * three strings of 2 KB in RxDB's memory storage.
 *
 * A store written by an earlier release (the same documents, ids of up to
 * 2048 characters, schema version 0) is copied into the current one at the
 * first start (in the tab that leads), then removed: nothing written
 * offline before the upgrade is lost or pushed twice, and a copy cut short
 * starts over from the old store as it is then.
 */
import { createRxDatabase, type RxCollection, type RxDatabase, type RxStorageInstance } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createSyncPlugin, type SyncApi } from '../src/client/index.js';
import { MAX_STORED_ID, META_SCHEMA, META_SCHEMA_V0, MIGRATED_ID, MetaStore, openInstance, storedId } from '../src/client/meta-store.js';
import { closeAfterEach, contents, metaRecords, openDatabase, seedMeta, startClient, startServer, toEarlierLayout, uniqueName, waitFor, type MetaRecord, type TestClient, type TestServer } from './helpers.js';

type Raw = MetaRecord;
type Instance = RxStorageInstance<Raw, unknown, unknown>;

const databases: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  await Promise.all(databases.splice(0).map((db) => db.close()));
});

async function database(name = uniqueName('meta')) {
  const db = await openDatabase(name);
  databases.push(db);
  return db as unknown as RxDatabase;
}

/** A store of the earlier layout holding `count` shadows; the shadows. */
async function earlierStore(db: RxDatabase, count: number): Promise<Raw[]> {
  const old = (await openInstance(db, META_SCHEMA_V0)) as unknown as Instance;
  const docs = Array.from({ length: count }, (_, i) => shadow('todos', `d${String(i).padStart(5, '0')}`, i));
  await seedMeta(db, old, docs);
  await old.close();
  return docs;
}

const shadow = (collection: string, documentId: string, seq: number): Raw => ({ id: `shadow|${collection}|${documentId}`, kind: 'shadow', value: { seq, data: { title: documentId.slice(0, 8) } } });

describe('ids longer than the stored bound', () => {
  it('are stored as a digest of at most MAX_STORED_ID characters and read, listed, rewritten and deleted by the id itself', async () => {
    const db = await database();
    const meta = await MetaStore.open(db);
    // Two ids alike in their first 1000 characters, and one just at the bound.
    const long1 = `shadow|todos|${'x'.repeat(1000)}1`;
    const long2 = `shadow|todos|${'x'.repeat(1000)}2`;
    const atBound = `shadow|todos|${'y'.repeat(MAX_STORED_ID - 'shadow|todos|'.length)}`;
    expect(atBound).toHaveLength(MAX_STORED_ID);
    await meta.write([
      { id: long1, kind: 'shadow', value: { n: 1 } },
      { id: long2, kind: 'shadow', value: { n: 2 } },
      { id: atBound, kind: 'shadow', value: { n: 3 } },
    ]);
    expect(await meta.get([long1, long2, atBound, `${long1}-missing`])).toEqual(new Map([[long1, { n: 1 }], [long2, { n: 2 }], [atBound, { n: 3 }]]));
    expect([...(await meta.getAll('shadow')).keys()].sort()).toEqual([long1, long2, atBound].sort());

    const raw = (await openInstance(db, META_SCHEMA)) as unknown as Instance;
    const stored = await metaRecords(raw);
    for (const doc of stored) expect(doc.id.length).toBeLessThanOrEqual(MAX_STORED_ID);
    expect(stored.filter((doc) => doc.kind === 'shadow').map((doc) => doc.fullId ?? doc.id).sort()).toEqual([long1, long2, atBound].sort());
    expect(stored.find((doc) => doc.id === atBound)?.fullId).toBeUndefined();

    // A later process knows nothing of their revisions: it rewrites and deletes them by the long id.
    const later = await MetaStore.open(db);
    await later.write([{ id: long1, kind: 'shadow', value: { n: 10 } }, { id: long2, kind: 'shadow' }]);
    expect(await later.get([long1, long2])).toEqual(new Map([[long1, { n: 10 }]]));
    await later.compact();
    // long2 is gone for good, tombstone and all.
    const left = await metaRecords(raw);
    expect(left.map((doc) => doc.fullId ?? doc.id).sort()).toEqual([long1, atBound].sort());
    expect(left.find((doc) => doc.fullId === long1)?.value).toEqual({ n: 10 });
    await raw.close();
  });

  it('a long id another process wrote meanwhile is written over after one refused attempt', async () => {
    const db = await database();
    const id = `conflict|todos|${'w'.repeat(300)}`;
    const first = await MetaStore.open(db);
    // Loaded whole at start, conflicts are not read before a write: the second store's first attempt is refused.
    const second = await MetaStore.open(db);
    await first.write([{ id, kind: 'conflict', value: { n: 1 } }]);
    await second.write([{ id, kind: 'conflict', value: { n: 2 } }]);
    expect(await first.get([id])).toEqual(new Map([[id, { n: 2 }]]));
  });

  it('ids that differ only in lone surrogates get digests of their own', async () => {
    const stem = `shadow|todos|${'s'.repeat(200)}`;
    const a = `${stem}\ud800`;
    const b = `${stem}\udc00`;
    expect(storedId(a)).not.toBe(storedId(b));
    const meta = await MetaStore.open(await database());
    await meta.write([{ id: a, kind: 'shadow', value: { n: 1 } }, { id: b, kind: 'shadow', value: { n: 2 } }]);
    expect(await meta.get([a, b])).toEqual(new Map([[a, { n: 1 }], [b, { n: 2 }]]));
  });

  it('a document with a 1000-character id syncs, and a manual conflict over it keeps its base and survives a restart', async () => {
    let server: TestServer | undefined = await startServer();
    const clients: { db: RxDatabase; sync: SyncApi; notes: RxCollection }[] = [];
    const noteSchema = { version: 0, primaryKey: 'id', type: 'object', properties: { id: { type: 'string', maxLength: 1024 }, title: { type: 'string' } }, required: ['id', 'title'] } as const;
    const start = async (name: string) => {
      const db = await createRxDatabase<{ notes: RxCollection }>({ name, storage: getRxStorageMemory() });
      await db.addCollections({ notes: { schema: noteSchema } });
      const sync = await db.addPlugin(createSyncPlugin({ serverUrl: server!.url, collections: ['notes'], conflictResolution: 'manual', logging: { enabled: false } }));
      const client = { db: db as unknown as RxDatabase, sync, notes: db.notes };
      clients.push(client);
      return client;
    };
    const title = async (client: { notes: RxCollection }) => (await client.notes.findOne(id).exec())?.get('title');
    const settled = (client: { sync: SyncApi }) => waitFor(() => client.sync.getStatus().pendingEvents === 0 && client.sync.getStatus().connected, 'settled');
    const id = `${'n'.repeat(999)}1`;
    try {
      const aName = uniqueName('long');
      const a = await start(aName);
      const b = await start(uniqueName('long'));
      await a.notes.insert({ id, title: 'base' });
      await waitFor(async () => (await title(b)) === 'base', 'b to get the note');
      await settled(a);

      // b's edit reaches the server first; a's, based on the shadow a keeps of its own push, conflicts.
      a.sync.disable();
      b.sync.disable();
      await (await b.notes.findOne(id).exec())!.patch({ title: 'from b' });
      await (await a.notes.findOne(id).exec())!.patch({ title: 'from a' });
      await waitFor(() => a.sync.getStatus().pendingEvents === 1 && b.sync.getStatus().pendingEvents === 1, 'both logged');
      b.sync.enable();
      await settled(b);
      a.sync.enable();
      await waitFor(() => a.sync.getConflicts().length === 1, 'a to keep a conflict');
      const [conflict] = a.sync.getConflicts();
      expect(conflict).toMatchObject({ collection: 'notes', documentId: id, local: { data: { title: 'from a' } }, remote: { data: { title: 'from b' } }, base: { data: { title: 'base' } } });

      await a.db.close();
      clients.splice(clients.indexOf(a), 1);
      const a2 = await start(aName);
      expect(a2.sync.getConflicts()).toMatchObject([conflict!]);
      const raw = (await openInstance(a2.db, META_SCHEMA)) as unknown as Instance;
      const stored = await metaRecords(raw);
      await raw.close();
      expect(Math.max(...stored.map((doc) => doc.id.length))).toBeLessThanOrEqual(MAX_STORED_ID);
      expect(stored.filter((doc) => doc.fullId).map((doc) => doc.kind).sort()).toEqual(['conflict', 'shadow']);

      await a2.sync.resolveConflict(conflict!.id, 'keep-local');
      await a2.sync.syncNow();
      await b.sync.syncNow();
      expect(await title(b)).toBe('from a');
      expect(a2.sync.getConflicts()).toEqual([]);
    } finally {
      await Promise.all(clients.map((client) => client.db.close()));
      await server.stop();
      server = undefined;
    }
  });
});

describe('a store of the earlier layout (ids of up to 2048 characters)', () => {
  const LONG = `shadow|todos|${'z'.repeat(1100)}`;

  it('is copied whole at the first start, marked done, and removed', async () => {
    const db = await database();
    const old = (await openInstance(db, META_SCHEMA_V0)) as unknown as Instance;
    const docs: Raw[] = [
      { id: 'state|main', kind: 'state', value: { clientId: 'c1', checkpoints: { todos: 7 }, logged: {} } },
      { id: 'pending|000001', kind: 'pending', value: { entries: [] } },
      ...Array.from({ length: 2500 }, (_, i) => shadow('todos', `d${String(i).padStart(5, '0')}`, i)),
      { id: LONG, kind: 'shadow', value: { seq: 99 } },
    ];
    await seedMeta(db, old, docs);
    await old.close();

    const meta = await MetaStore.open(db);
    expect(await meta.get(['state|main'])).toEqual(new Map());
    await meta.upgrade();
    expect(await meta.get(docs.map((doc) => doc.id))).toEqual(new Map(docs.map((doc) => [doc.id, doc.value])));
    expect((await meta.getAll('state')).get(MIGRATED_ID)).toBeDefined();
    const again = (await openInstance(db, META_SCHEMA_V0)) as unknown as Instance;
    expect(await metaRecords(again, META_SCHEMA_V0)).toEqual([]);
    await again.close();
  });

  it('a copy cut short starts over: what it left is dropped, and the old store is copied as it is now', async () => {
    const db = await database();
    const docs = await earlierStore(db, 2500);
    // The first page got there; then a tab of the earlier release led, changed one of its records
    // and settled a conflict the cut-off copy had taken along.
    const current = (await openInstance(db, META_SCHEMA)) as unknown as Instance;
    const settled: Raw = { id: 'conflict|todos|d00003', kind: 'conflict', value: { id: 'conflict|todos|d00003' } };
    await seedMeta(db, current, [...docs.slice(0, 1000).map((doc, i) => (i === 10 ? { ...doc, value: { seq: 5000 } } : doc)), settled]);
    await current.close();

    const meta = await MetaStore.open(db);
    await meta.upgrade();
    const read = await meta.get<{ seq: number }>([...docs.map((doc) => doc.id), settled.id]);
    expect(read.size).toBe(2500);
    expect(read.get(docs[10]!.id)).toEqual(docs[10]!.value);
    expect(read.get(docs[2499]!.id)).toEqual(docs[2499]!.value);
    expect(await meta.getAll('conflict')).toEqual(new Map());
  });

  it('a copy complete but not marked (the old store removed, then a crash) is kept and marked', async () => {
    const db = await database();
    const current = (await openInstance(db, META_SCHEMA)) as unknown as Instance;
    const docs: Raw[] = [{ id: 'state|main', kind: 'state', value: { clientId: 'c1', checkpoints: {}, logged: {} } }, shadow('todos', 'd1', 1)];
    await seedMeta(db, current, docs);
    await current.close();
    const meta = await MetaStore.open(db);
    await meta.upgrade();
    expect(await meta.get(docs.map((doc) => doc.id))).toEqual(new Map(docs.map((doc) => [doc.id, doc.value])));
    expect((await meta.getAll('state')).has(MIGRATED_ID)).toBe(true);
  });

  it('a copy marked done whose old store was not removed yet (a crash between the two): the old store is removed, nothing copied again', async () => {
    const db = await database();
    const current = (await openInstance(db, META_SCHEMA)) as unknown as Instance;
    const copied: Raw[] = [{ id: 'state|main', kind: 'state', value: { clientId: 'c1', checkpoints: {}, logged: {} } }, { id: MIGRATED_ID, kind: 'state', value: { from: 0, at: 1, removed: false } }];
    await seedMeta(db, current, copied);
    await current.close();
    // A tab of the earlier release led meanwhile and logged into the old store; its writes are in the
    // app's collections, where recover() finds them.
    const written = await earlierStore(db, 3);
    const meta = await MetaStore.open(db);
    await meta.upgrade();
    expect(await meta.get(written.map((doc) => doc.id))).toEqual(new Map());
    expect(await meta.get(['state|main'])).toEqual(new Map([['state|main', copied[0]!.value]]));
    expect((await meta.getAll<{ removed: boolean }>('state')).get(MIGRATED_ID)?.removed).toBe(true);
    const old = (await openInstance(db, META_SCHEMA_V0)) as unknown as Instance;
    expect(await metaRecords(old, META_SCHEMA_V0)).toEqual([]);
    await old.close();
  });

  it('the mark failing to be written, then a tab of the earlier release leading: nothing either logged is lost', async () => {
    const db = await database();
    const old = (await openInstance(db, META_SCHEMA_V0)) as unknown as Instance;
    const before: Raw[] = [{ id: 'state|main', kind: 'state', value: { clientId: 'c1', checkpoints: {}, logged: {} } }, { id: 'pending|000001', kind: 'pending', value: { entries: [] } }];
    await seedMeta(db, old, before);
    await old.close();
    const write = MetaStore.prototype.write;
    const failing = vi.spyOn(MetaStore.prototype, 'write').mockImplementation(async function (this: MetaStore, writes) {
      if (writes.some((w) => w.id === MIGRATED_ID)) throw new Error('the disk is full');
      return write.call(this, writes);
    });
    await expect((await MetaStore.open(db)).upgrade()).rejects.toThrow('the disk is full');
    failing.mockRestore();
    // The earlier release leads again and logs one more page into the old store.
    const after = await earlierStore(db, 1);

    const meta = await MetaStore.open(db);
    await meta.upgrade();
    expect(await meta.get([...before, ...after].map((doc) => doc.id))).toEqual(new Map([...before, ...after].map((doc) => [doc.id, doc.value])));
  });

  it('a store closed while it copies stops, and the next start copies everything', async () => {
    const db = await database();
    const docs = await earlierStore(db, 3000);
    const first = await MetaStore.open(db);
    const copying = first.upgrade();
    await first.close();
    await expect(copying).rejects.toMatchObject({ code: 'CLOSED' });

    const next = await MetaStore.open(db);
    await next.upgrade();
    expect((await next.get(docs.map((doc) => doc.id))).size).toBe(3000);
    expect((await next.getAll('state')).has(MIGRATED_ID)).toBe(true);
  });

  it('once marked done, an old store is not read again', async () => {
    const db = await database();
    await (await MetaStore.open(db)).upgrade();
    // An old store that, say, could not be removed.
    const old = (await openInstance(db, META_SCHEMA_V0)) as unknown as Instance;
    await seedMeta(db, old, [shadow('todos', 'stale', 1)]);
    await old.close();
    const meta = await MetaStore.open(db);
    await meta.upgrade();
    expect(await meta.get(['shadow|todos|stale'])).toEqual(new Map());
  });

  describe('a client upgraded with writes made offline', () => {
    let server: TestServer | undefined;
    const clients: TestClient[] = [];
    closeAfterEach(clients, () => server);

    it('pushes each of them once after the upgrade, as the same client, on top of what it had synced', async () => {
      server = await startServer();
      const name = uniqueName('upgrade');
      const a = await startClient(server.url, { name });
      clients.push(a);
      await a.todos.bulkInsert([{ id: 'a', title: 'a', done: false }, { id: 'b', title: 'b', done: false }]);
      await waitFor(() => a.sync.getStatus().pendingEvents === 0 && a.sync.getStatus().lastSyncTime !== null, 'a to push');
      a.sync.disable();
      await (await a.todos.findOne('a').exec())!.patch({ title: 'a, offline' });
      await a.todos.insert({ id: 'c', title: 'c, offline', done: true });
      await waitFor(() => a.sync.getStatus().pendingEvents === 2, 'the offline writes logged');
      await a.close();
      clients.splice(0);

      // The same database as the earlier release left it: its store in the old layout.
      expect(await toEarlierLayout(name)).toEqual(expect.arrayContaining(['state', 'pending']));

      const upgraded = await startClient(server.url, { name });
      clients.push(upgraded);
      await upgraded.sync.syncNow();
      const events = await server.server.getStorage().getEventsAfter(0);
      expect(events.map((event) => [event.documentId, event.op])).toEqual([['a', 'insert'], ['b', 'insert'], ['a', 'update'], ['c', 'insert']]);
      expect(new Set(events.map((event) => event.clientId)).size).toBe(1);
      expect(events[2]!.baseEventId).toBe(events[0]!.id);
      expect(upgraded.sync.getStatus()).toMatchObject({ pendingEvents: 0, conflicts: 0, error: null });
      expect(await contents(upgraded.todos)).toEqual([
        { id: 'a', title: 'a, offline', done: false },
        { id: 'b', title: 'b', done: false },
        { id: 'c', title: 'c, offline', done: true },
      ]);
    });
  });
});
