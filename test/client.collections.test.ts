import { createRxDatabase, type RxCollection, type RxJsonSchema } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { afterEach, describe, expect, it } from 'vitest';
import { createSyncPlugin, type SyncApi } from '../src/client/index.js';
import { sleep, startServer, todoSchema, uniqueName, waitFor, type TestServer, type Todo } from './helpers.js';

interface Note {
  id: string;
  text: string;
}
const noteSchema: RxJsonSchema<Note> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: { id: { type: 'string', maxLength: 100 }, text: { type: 'string' } },
  required: ['id', 'text'],
};

let server: TestServer | undefined;
const closers: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close().catch(() => undefined)));
  await server?.stop();
  server = undefined;
});

async function device(url: string, collections: string[]) {
  const db = await createRxDatabase<{ todos: RxCollection<Todo>; notes: RxCollection<Note> }>({ name: uniqueName('two'), storage: getRxStorageMemory() });
  await db.addCollections({ todos: { schema: todoSchema }, notes: { schema: noteSchema } });
  const sync: SyncApi = await db.addPlugin(
    createSyncPlugin({ serverUrl: url, collections, logging: { enabled: false }, retry: { maxRetries: 5, retryDelay: 50, useExponentialBackoff: true } }),
  );
  closers.push(() => db.close());
  return { db, sync };
}

const notesOnServer = async () => (await server!.server.getStorage().getEventsAfter(0, { collections: ['notes'] })).map((e) => e.documentId);

describe('collections added and removed at run time', () => {
  it('addCollection starts logging, pushing and pulling it; removeCollection stops; db.plugin("sync") is the same API', async () => {
    server = await startServer();
    const a = await device(server.url, ['todos']);
    const b = await device(server.url, ['todos', 'notes']);
    expect(a.db.plugin('sync')).toBe(a.sync);
    expect(a.sync.getCollections()).toEqual(['todos']);

    await a.db.notes.insert({ id: 'n1', text: 'written before notes were synced' });
    await b.db.notes.insert({ id: 'n2', text: 'from b' });
    await waitFor(async () => (await notesOnServer()).includes('n2'), 'b to push n2');
    await a.sync.syncNow();
    expect(await notesOnServer()).toEqual(['n2']);
    expect(await a.db.notes.findOne('n2').exec()).toBeNull();

    a.sync.addCollection('notes');
    expect(a.sync.getCollections()).toEqual(['todos', 'notes']);
    // Its writes from before are found and pushed, and what others wrote is pulled; then it is live.
    await waitFor(async () => (await notesOnServer()).includes('n1'), 'a to push n1');
    await waitFor(async () => (await a.db.notes.findOne('n2').exec()) !== null, 'a to pull n2');
    await b.db.notes.insert({ id: 'n3', text: 'live from b' });
    await waitFor(async () => (await a.db.notes.findOne('n3').exec()) !== null, 'a to get n3 live');

    a.sync.removeCollection('notes');
    expect(a.sync.getCollections()).toEqual(['todos']);
    await a.db.notes.insert({ id: 'n4', text: 'not synced any more' });
    await b.db.notes.insert({ id: 'n5', text: 'a does not want this' });
    await waitFor(async () => (await notesOnServer()).includes('n5'), 'b to push n5');
    await a.sync.syncNow();
    await sleep(100);
    expect(await notesOnServer()).not.toContain('n4');
    expect(await a.db.notes.findOne('n5').exec()).toBeNull();
    expect(a.sync.getStatus().error).toBeNull();
    // Todos go on as before.
    await a.db.todos.insert({ id: 't', title: 'still synced', done: false });
    await waitFor(async () => (await b.db.todos.findOne('t').exec()) !== null, 'b to get the todo');
  });

  it('refuses to add a collection the database lacks, naming it', async () => {
    server = await startServer();
    const a = await device(server.url, ['todos']);
    expect(() => a.sync.addCollection('nope')).toThrow(/nope/);
  });
});
