/**
 * A bulk of app writes larger than a step (a pending-log page, 500 documents)
 * is logged in steps, with pushes of what is logged going out in between.
 * What that must not change: a later write of a document is logged after an
 * earlier one, a bulk cut off midway is logged at the next start, and
 * syncNow() and clearPendingEvents() take every write made before the call.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Replicator } from '../src/client/replicator.js';
import { MemorySyncStorage } from '../src/server/storage/memory.js';
import type { StoredEvent } from '../src/shared/protocol/index.js';
import { contents, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer, type Todo } from './helpers.js';

const BULK = 1600;
const todos = (title: string, count = BULK): Todo[] => Array.from({ length: count }, (_, i) => ({ id: `d${String(i).padStart(5, '0')}`, title, done: false }));

let server: TestServer | undefined;
const clients: TestClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await server?.stop();
  server = undefined;
});

async function client(options: Parameters<typeof startClient>[1] = {}): Promise<TestClient> {
  const started = await startClient(server!.url, options);
  clients.push(started);
  return started;
}

/** A memory storage that reports each push it stores, before answering it. */
function watchedStorage(onSave: (events: readonly { documentId: string }[]) => void): MemorySyncStorage {
  const storage = new MemorySyncStorage();
  const save = storage.saveEvents.bind(storage);
  storage.saveEvents = async (events) => {
    onSave(events);
    return save(events);
  };
  return storage;
}

/** Every event the server stored, per document, oldest first. */
async function storedByDocument(): Promise<Map<string, StoredEvent[]>> {
  const byDocument = new Map<string, StoredEvent[]>();
  for (const event of await server!.server.getStorage().getEventsAfter(0)) {
    byDocument.set(event.documentId, [...(byDocument.get(event.documentId) ?? []), event]);
  }
  return byDocument;
}

describe('a bulk of app writes larger than a step', () => {
  it('is pushed while its later steps are still being logged', async () => {
    let loggedAtFirstPush: number | undefined;
    let app: TestClient | undefined;
    server = await startServer({ storage: watchedStorage(() => (loggedAtFirstPush ??= app!.sync.getStatus().pendingEvents)) });
    app = await client();
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === BULK, 'the server to hold the bulk');
    // Logged in one step, the whole bulk would be in the log before anything went out.
    expect(loggedAtFirstPush).toBeLessThan(BULK);
    expect([...(await storedByDocument()).values()].every((events) => events.length === 1)).toBe(true);
  });

  it('is logged before a later bulk that writes the same documents: the server ends with the later writes', async () => {
    server = await startServer();
    const app = await client();
    await app.sync.syncNow();
    // The second and third bulks are written while the first is still being logged in steps.
    await app.todos.bulkInsert(todos('first'));
    await app.todos.bulkUpsert(todos('second'));
    await app.todos.bulkRemove(todos('', 300).map((todo) => todo.id));
    await waitFor(() => app.sync.getStatus().pendingEvents === 0 && !app.sync.getStatus().syncing, 'the client to push everything');
    await app.sync.syncNow();

    const byDocument = await storedByDocument();
    expect(byDocument.size).toBe(BULK);
    for (const [documentId, events] of byDocument) {
      const last = events.at(-1)!;
      const removed = Number(documentId.slice(1)) < 300;
      // (An unsent insert takes a later write into itself: the op of a kept document's last event varies.)
      if (removed) expect(last.op, documentId).toBe('delete');
      else expect([last.op, last.data.title], documentId).toEqual([expect.not.stringMatching('delete'), 'second']);
      // Each event is based on the one before it: none was logged out of order.
      events.forEach((event, i) => expect(event.baseEventId, documentId).toBe(i === 0 ? null : events[i - 1]!.id));
    }
    expect((await contents(app.todos)).map((todo) => todo.title)).toEqual(todos('second').slice(300).map((todo) => todo.title));
  });

  it('cut off midway by closing the database is logged and pushed at the next start, once', async () => {
    let app: TestClient | undefined;
    let closing: Promise<void> | undefined;
    // The database closes as the first step's push arrives: later steps are not logged yet.
    server = await startServer({ storage: watchedStorage(() => (closing ??= app!.close())) });
    const name = uniqueName('bulk-cut');
    app = await startClient(server.url, { name });
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    await waitFor(() => closing !== undefined, 'the first push');
    await closing;
    const storedBeforeRestart = await server.server.getStorage().countEvents();
    expect(storedBeforeRestart).toBeLessThan(BULK);

    const restarted = await client({ name });
    await restarted.sync.syncNow();
    await waitFor(async () => (await server!.server.getStorage().countEvents()) >= BULK, 'the rest of the bulk');
    await restarted.sync.syncNow();
    const byDocument = await storedByDocument();
    expect(byDocument.size).toBe(BULK);
    expect([...byDocument.values()].every((events) => events.length === 1 && events[0]!.op === 'insert')).toBe(true);
  });

  it('cut off by closing the database while a later write waits for it: both are pushed at the next start', async () => {
    // The later write must not store its checkpoint past the writes the cut-off bulk left unlogged.
    let app: TestClient | undefined;
    let closing: Promise<void> | undefined;
    server = await startServer({ storage: watchedStorage(() => (closing ??= app!.close())) });
    const name = uniqueName('bulk-cut-later');
    app = await startClient(server.url, { name });
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    await app.todos.insert({ id: 'later', title: 'written after the bulk', done: false });
    await waitFor(() => closing !== undefined, 'the first push');
    await closing;

    const restarted = await client({ name });
    await restarted.sync.syncNow();
    await waitFor(async () => (await storedByDocument()).size === BULK + 1 && restarted.sync.getStatus().pendingEvents === 0, 'every write on the server');
    expect([...(await storedByDocument()).values()].every((events) => events.length === 1)).toBe(true);
  });

  it('cut off by removing the collection while a later write waits for it: both are pushed once it is synced again', async () => {
    let app: TestClient | undefined;
    let removed = false;
    server = await startServer({
      storage: watchedStorage(() => {
        if (removed) return;
        removed = true;
        app!.sync.removeCollection('todos');
      }),
    });
    app = await client();
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    await app.todos.insert({ id: 'later', title: 'written after the bulk', done: false });
    await waitFor(() => removed, 'the first push');
    await app.sync.syncNow();
    app.sync.addCollection('todos');
    await waitFor(async () => (await storedByDocument()).size === BULK + 1 && app!.sync.getStatus().pendingEvents === 0, 'every write on the server');
    expect([...(await storedByDocument()).values()].every((events) => events.length === 1)).toBe(true);
  });

  it('noted before its collection was removed and added again is not logged over a write made meanwhile', async () => {
    let app: TestClient | undefined;
    let rewatched = false;
    server = await startServer({
      storage: watchedStorage(() => {
        if (rewatched) return;
        rewatched = true;
        app!.sync.removeCollection('todos');
        // Written while the collection is not synced, so noted by no one; the bulk's later steps carry the older state.
        void app!.todos.upsert({ id: 'd01500', title: 'newer', done: false }).then(() => app!.sync.addCollection('todos'));
      }),
    });
    app = await client();
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    await waitFor(() => rewatched && app!.sync.getCollections().includes('todos'), 'the collection to be synced again');
    await waitFor(async () => (await storedByDocument()).size === BULK && app!.sync.getStatus().pendingEvents === 0, 'every write on the server');
    await app.sync.syncNow();
    const events = (await storedByDocument()).get('d01500')!;
    expect(events.at(-1)!.data.title).toBe('newer');
    expect((await contents(app.todos)).find((todo) => todo.id === 'd01500')!.title).toBe('newer');
  });

  it('cut off by a failed step while a later write waits for it: both are pushed at the next start', async () => {
    server = await startServer();
    const name = uniqueName('bulk-failed-step');
    const app = await startClient(server.url, { name });
    await app.sync.syncNow();
    const record = Replicator.prototype.recordLocalChanges;
    let calls = 0;
    const failing = vi.spyOn(Replicator.prototype, 'recordLocalChanges').mockImplementation(function (this: Replicator, ...args) {
      // The bulk's second step fails, as a storage write might.
      if (++calls === 2) return Promise.reject(new Error('the storage refused the write'));
      return record.apply(this, args);
    });
    await app.todos.bulkInsert(todos('first'));
    await app.todos.insert({ id: 'later', title: 'written after the bulk', done: false });
    await waitFor(async () => (await storedByDocument()).has('later'), 'the later write on the server');
    failing.mockRestore();
    await app.close();

    const restarted = await client({ name });
    await restarted.sync.syncNow();
    await waitFor(async () => (await storedByDocument()).size === BULK + 1 && restarted.sync.getStatus().pendingEvents === 0, 'every write on the server');
    expect([...(await storedByDocument()).values()].every((events) => events.length === 1)).toBe(true);
  });

  it('is pushed whole by a syncNow() called right after the write', async () => {
    server = await startServer();
    const app = await client({ autoSync: false });
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    const result = await app.sync.syncNow();
    expect(result).toMatchObject({ success: true, syncedEvents: BULK });
    expect(await server.server.getStorage().countEvents()).toBe(BULK);
  });

  it('is dropped whole by a clearPendingEvents() called right after the write', async () => {
    server = await startServer();
    const app = await client({ autoSync: false });
    await app.sync.syncNow();
    await app.todos.bulkInsert(todos('first'));
    expect(await app.sync.clearPendingEvents()).toBe(BULK);
    expect(app.sync.getStatus().pendingEvents).toBe(0);
  });
});
