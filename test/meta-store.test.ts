/**
 * The plugin's own store keeps ids of at most MAX_STORED_ID characters: a
 * longer id (a document id may have 1024) is stored as its SHA-256, the id
 * itself beside it. Storages that index strings pad every indexed id to the
 * schema's maxLength, so the earlier bound of 2048 made each shadow cost
 * three strings of 2 KB in RxDB's memory storage.
 */
import { createRxDatabase, type RxCollection, type RxDatabase, type RxStorageInstance } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { afterEach, describe, expect, it } from 'vitest';
import { createSyncPlugin, type SyncApi } from '../src/client/index.js';
import { MAX_STORED_ID, META_SCHEMA, MetaStore, openInstance, storedId } from '../src/client/meta-store.js';
import { metaRecords, openDatabase, startServer, uniqueName, waitFor, type MetaRecord, type TestServer } from './helpers.js';

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
