import { firstValueFrom, lastValueFrom, take, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { SyncError } from '../src/client/index.js';
import { closeAfterEach, freePort, listsPending, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

async function client(url: string, options: Parameters<typeof startClient>[1] = {}) {
  const c = await startClient(url, options);
  clients.push(c);
  return c;
}

/** Whether `promise` has settled by the time the promises already due have run. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((resolve) => setImmediate(resolve));
  return done;
}

closeAfterEach(clients, () => server);

describe('the replication handle', () => {
  it('awaitInitialSync() waits for the server, however long it is away, then resolves', async () => {
    const port = await freePort();
    const a = await client(`http://127.0.0.1:${port}`);
    await a.todos.insert({ id: 'early', title: 'before the server', done: false });
    const initial = a.sync.awaitInitialSync();
    const inSync = a.sync.awaitInSync();
    // The first attempt failed: still waiting.
    const error = await firstValueFrom(a.sync.error$);
    expect(error).toBeInstanceOf(SyncError);
    expect(error.code).toBe('NOT_CONNECTED');
    expect(await settled(initial)).toBe(false);
    server = await startServer({}, port);
    await initial;
    await inSync;
    expect(a.sync.getStatus()).toMatchObject({ connected: true, pendingEvents: 0 });
    expect(await server.server.getStorage().countEvents()).toBe(1);
  });

  it('awaitInSync() resolves once a local write is acknowledged', async () => {
    server = await startServer();
    const a = await client(server.url);
    await a.sync.awaitInitialSync();
    await a.todos.insert({ id: 'n', title: 'new', done: false });
    await a.sync.awaitInSync();
    expect(a.sync.getStatus().pendingEvents).toBe(0);
    expect((await server.server.getStorage().getEventsAfter(0)).map((event) => event.documentId)).toEqual(['n']);
  });

  it('syncNow() rejects with a SyncError; active$ shows the run', async () => {
    server = await startServer();
    const a = await client(server.url, { autoSync: false });
    const activity = lastValueFrom(a.sync.active$.pipe(take(3), toArray()));
    await a.todos.insert({ id: 'x', title: 'x', done: false });
    expect(await a.sync.syncNow()).toMatchObject({ syncedEvents: 1 });
    expect(await activity).toEqual([false, true, false]);
    a.sync.disable();
    const refused = await a.sync.syncNow().catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(SyncError);
    expect(refused).toMatchObject({ code: 'DISABLED' });
  });

  it('cancel() stops the client for good and rejects what waits', async () => {
    const port = await freePort();
    const a = await client(`http://127.0.0.1:${port}`);
    const initial = a.sync.awaitInitialSync();
    await a.sync.cancel();
    await expect(initial).rejects.toMatchObject({ code: 'CLOSED' });
    await expect(a.sync.awaitInSync()).rejects.toMatchObject({ code: 'CLOSED' });
    await expect(a.sync.syncNow()).rejects.toMatchObject({ code: 'CLOSED' });
  });

  it('sent$ names each acknowledged change, received$ each change that came from the server', async () => {
    server = await startServer();
    const a = await client(server.url);
    const b = await client(server.url);
    await Promise.all([a.sync.awaitInitialSync(), b.sync.awaitInitialSync()]);
    const sent = firstValueFrom(a.sync.sent$);
    const received = firstValueFrom(b.sync.received$);
    await a.todos.insert({ id: 'w', title: 'written by a', done: false });
    const [stored] = await Promise.all([sent, a.sync.awaitInSync()]);
    const [event] = await server.server.getStorage().getEventsAfter(0);
    expect(stored).toEqual([{ collection: 'todos', documentId: 'w', seq: event!.seq }]);
    expect(await received).toEqual([{ collection: 'todos', documentId: 'w', seq: event!.seq }]);
  });

  it('lists the documents whose changes wait for the server, per collection, until they are acknowledged or dropped', async () => {
    server = await startServer();
    const a = await client(server.url, { autoSync: false });
    expect(a.sync.getPendingDocuments()).toEqual({});
    const lists: unknown[] = [];
    const watching = a.sync.pendingDocuments$.subscribe((pending) => lists.push(pending));
    await a.todos.bulkInsert([{ id: 'y', title: 'one', done: false }, { id: 'x', title: 'two', done: false }]);
    // Edited again: one document, however many changes wait.
    await (await a.todos.findOne('y').exec())!.incrementalPatch({ done: true });
    // Logged in the turn after the write, as pendingEvents is counted.
    await waitFor(() => listsPending(a.sync, { todos: ['x', 'y'] }), 'both listed');
    await a.sync.syncNow();
    expect(a.sync.getPendingDocuments()).toEqual({});
    await a.todos.insert({ id: 'z', title: 'three', done: false });
    await waitFor(() => listsPending(a.sync, { todos: ['z'] }), 'the third listed');
    expect(await a.sync.clearPendingEvents()).toBe(1);
    expect(a.sync.getPendingDocuments()).toEqual({});
    watching.unsubscribe();
    // The list as it changed, each state once: never the same list twice in a row.
    expect(lists).toContainEqual({ todos: ['x', 'y'] });
    expect(lists).toContainEqual({ todos: ['z'] });
    expect(lists.at(-1)).toEqual({});
    expect(lists.every((list, i) => i === 0 || JSON.stringify(list) !== JSON.stringify(lists[i - 1]))).toBe(true);
  });

  it('exposes its observables read-only', async () => {
    server = await startServer();
    const a = await client(server.url, { autoSync: false });
    for (const observable of [a.sync.status$, a.sync.conflicts$, a.sync.rejected$, a.sync.error$, a.sync.active$, a.sync.received$, a.sync.sent$, a.sync.pendingDocuments$]) {
      expect('next' in observable).toBe(false);
    }
  });
});
