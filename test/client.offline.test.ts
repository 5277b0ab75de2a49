import { describe, expect, it } from 'vitest';
import { MemorySyncStorage } from '../src/server/index.js';
import type { SyncStatus } from '../src/client/index.js';
import { closeAfterEach, contents, freePort, openDatabase, sleep, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer, outcome } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

async function client(url: string, options: Parameters<typeof startClient>[1] = {}) {
  const c = await startClient(url, options);
  clients.push(c);
  return c;
}

async function sameContents(a: TestClient, b: TestClient) {
  await waitFor(async () => JSON.stringify(await contents(a.todos)) === JSON.stringify(await contents(b.todos)), 'clients to converge');
}

closeAfterEach(clients, () => server);

describe('offline work', () => {
  it('a client that was offline pushes its offline edits and pulls what it missed', async () => {
    server = await startServer();
    const a = await client(server.url);
    const b = await client(server.url);
    await a.todos.insert({ id: 'shared', title: 'v1', done: false });
    await waitFor(async () => (await b.todos.findOne('shared').exec()) !== null, 'b to get shared');
    await waitFor(() => a.sync.getStatus().pendingEvents === 0, 'a to get its acknowledgement');

    a.sync.disable();
    await a.todos.insert({ id: 'offline-a', title: 'written offline', done: false });
    await (await a.todos.findOne('shared').exec())!.patch({ done: true });
    await b.todos.insert({ id: 'online-b', title: 'written while a was away', done: false });
    await waitFor(() => a.sync.getStatus().pendingEvents === 2, 'a to log both offline writes');
    await sleep(100);
    expect(await server.server.getStorage().countEvents()).toBe(2);

    a.sync.enable();
    await sameContents(a, b);
    expect((await contents(b.todos)).find((t) => t.id === 'shared')!.done).toBe(true);
    expect((await contents(a.todos)).map((t) => t.id)).toEqual(['offline-a', 'online-b', 'shared']);
    await waitFor(() => a.sync.getStatus().pendingEvents === 0, 'a to have nothing pending');
  });

  it('several offline updates to one document collapse into one pushed event', async () => {
    server = await startServer();
    const a = await client(server.url, { autoSync: false });
    await a.todos.insert({ id: 'c', title: 't0', done: false });
    for (let i = 1; i <= 10; i++) await (await a.todos.findOne('c').exec())!.patch({ title: `t${i}` });
    await sleep(50);
    expect(a.sync.getStatus().pendingEvents).toBe(1);
    const result = await a.sync.syncNow();
    expect(result).toMatchObject({ success: true, error: null, syncedEvents: 1 });
    const [event] = await server.server.getStorage().getEventsAfter(0);
    expect(event).toMatchObject({ op: 'insert', data: { id: 'c', title: 't10' } });
  });

  it('works while the server is down and syncs once it is up', async () => {
    const port = await freePort();
    const a = await client(`http://127.0.0.1:${port}`);
    await a.todos.insert({ id: 'early', title: 'before the server', done: false });
    const failed = await outcome(a.sync.syncNow());
    expect(failed).toMatchObject({ success: false });
    expect(a.sync.getStatus().connected).toBe(false);
    server = await startServer({}, port);
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the offline write to reach the server', 15_000);
  });
});

describe('exactly once', () => {
  it('a lost acknowledgement causes no duplicate and loses nothing', async () => {
    const storage = new MemorySyncStorage();
    let dropNextAck = true;
    const save = storage.saveEvents.bind(storage);
    storage.saveEvents = async (events) => {
      const results = await save(events);
      if (dropNextAck) {
        dropNextAck = false;
        // Stored, but the connection dies before the answer leaves.
        server!.server.getIo().disconnectSockets(true);
      }
      return results;
    };
    server = await startServer({ storage });
    const a = await client(server.url);
    const b = await client(server.url);
    await waitFor(() => a.sync.getStatus().connected && b.sync.getStatus().connected, 'both connected');
    await a.todos.insert({ id: 'once', title: 'exactly once', done: false });
    await waitFor(async () => (await b.todos.findOne('once').exec()) !== null, 'b to receive it', 15_000);
    await waitFor(() => a.sync.getStatus().pendingEvents === 0 && a.sync.getStatus().connected, 'a to settle', 15_000);
    expect(dropNextAck).toBe(false);
    expect(await storage.countEvents()).toBe(1);
    await a.sync.syncNow();
    expect(await storage.countEvents()).toBe(1);
  });

  it('applies each remote event once and only moves its checkpoint forward', async () => {
    server = await startServer();
    const a = await client(server.url);
    const b = await client(server.url);
    const writesSeenByB: string[] = [];
    b.todos.$.subscribe((event) => writesSeenByB.push(`${event.operation}:${event.documentId}`));
    for (let i = 0; i < 20; i++) await a.todos.insert({ id: `n${i}`, title: `${i}`, done: false });
    await waitFor(async () => (await b.todos.count().exec()) === 20, 'b to get all 20');
    await b.sync.syncNow();
    await b.sync.syncNow();
    expect(writesSeenByB.sort()).toEqual(Array.from({ length: 20 }, (_, i) => `INSERT:n${i}`).sort());
  });
});

describe('restart and crash', () => {
  it('pending events and the checkpoint survive closing and reopening the database', async () => {
    server = await startServer();
    const other = await client(server.url);
    await other.todos.insert({ id: 'from-other', title: 'x', done: false });
    await other.sync.syncNow();

    const name = uniqueName('restart');
    const first = await startClient(server.url, { name });
    await first.sync.syncNow();
    expect(await first.todos.count().exec()).toBe(1);
    first.sync.disable();
    await first.todos.insert({ id: 'unpushed', title: 'made before the restart', done: false });
    await waitFor(() => first.sync.getStatus().pendingEvents === 1, 'the write to be logged');
    await first.close();

    let pulls = 0;
    server.server.getIo().on('connection', (socket) => socket.onAny((event, message) => {
      if (event === 'sync:pull' && message.checkpoint === 0) pulls++;
    }));
    const second = await client(server.url, { name, autoSync: false });
    expect(second.sync.getStatus().pendingEvents).toBe(1);
    await second.sync.syncNow();
    expect(pulls).toBe(0);
    expect(await server.server.getStorage().countEvents()).toBe(2);
    await sameContents(second, other);
  });

  it('an event that may have reached the server is never rewritten, also after a restart', async () => {
    // The server stores the push and goes away before answering. After a restart of the
    // client, a new edit must become a new event: folded into the first one (same id)
    // the server would call it a duplicate and the edit would be lost.
    const storage = new MemorySyncStorage();
    let stored = 0;
    const save = storage.saveEvents.bind(storage);
    storage.saveEvents = async (events) => {
      await save(events);
      stored += events.length;
      server!.server.getIo().disconnectSockets(true);
      return new Promise<never>(() => undefined); // the answer never leaves
    };
    server = await startServer({ storage });
    const port = server.port;
    const name = uniqueName('sent');
    const first = await startClient(server.url, { name });
    await first.todos.insert({ id: 'doc', title: 'v1', done: false });
    await waitFor(() => stored === 1, 'the server to store v1');
    await server.stop();
    await first.close();

    const second = await client(`http://127.0.0.1:${port}`, { name });
    await (await second.todos.findOne('doc').exec())!.patch({ title: 'v2' });
    await waitFor(() => second.sync.getStatus().pendingEvents === 2, 'v2 to be logged as an event of its own');

    storage.saveEvents = save;
    server = await startServer({ storage }, port);
    await waitFor(() => second.sync.getStatus().pendingEvents === 0, 'both events to be acknowledged', 15_000);
    const [head] = await storage.getHeads('todos', ['doc']);
    expect(head!.data.title).toBe('v2');
    expect(await storage.countEvents()).toBe(2);
    expect((await contents(second.todos))[0]!.title).toBe('v2');
  });

  it('an edit of a pulled document is a patch on the server version, also when its logging was cut off by a crash', async () => {
    server = await startServer();
    const storage = server.server.getStorage();
    const writer = await client(server.url);
    await writer.todos.bulkInsert([
      { id: 'p1', title: 'one', done: false },
      { id: 'p2', title: 'two', done: false },
    ]);
    await writer.sync.syncNow();
    const heads = new Map((await storage.getHeads('todos', ['p1', 'p2'])).map((head) => [head.documentId, head]));

    const name = uniqueName('pulled');
    const first = await startClient(server.url, { name });
    await first.sync.syncNow();
    await (await first.todos.findOne('p1').exec())!.patch({ title: 'one, edited' });
    await first.sync.syncNow();
    const [edit] = await storage.getEventsAfter(heads.get('p2')!.seq, { collections: ['todos'] });
    expect(edit).toMatchObject({ documentId: 'p1', op: 'update', baseEventId: heads.get('p1')!.eventId, patch: [{ op: 'replace', path: '/title', value: 'one, edited' }] });
    await first.close();

    // A write the plugin never saw: it is still based on the version the client last pulled.
    const bare = await openDatabase(name);
    await (await bare.todos.findOne('p2').exec())!.patch({ done: true });
    await bare.close();
    const second = await client(server.url, { name });
    await second.sync.syncNow();
    const [head] = await storage.getHeads('todos', ['p2']);
    expect(head).toMatchObject({ data: { id: 'p2', title: 'two', done: true }, deleted: false });
    const events = await storage.getEventsAfter(edit!.seq, { collections: ['todos'] });
    expect(events).toMatchObject([{ documentId: 'p2', op: 'update', baseEventId: heads.get('p2')!.eventId }]);
    expect(second.sync.getConflicts()).toEqual([]);
  });

  it('a write that reached storage but not the log (a crash in between) is still pushed after restart', async () => {
    server = await startServer();
    const name = uniqueName('crash');
    const first = await startClient(server.url, { name });
    await first.todos.insert({ id: 'logged', title: 'a', done: false });
    await first.sync.syncNow();
    await first.close();

    // The process "dies" right after the document writes: they are in storage, the plugin never saw them.
    const bare = await openDatabase(name);
    await bare.todos.insert({ id: 'unlogged', title: 'b', done: false });
    await (await bare.todos.findOne('logged').exec())!.patch({ done: true });
    await bare.close();

    const second = await client(server.url, { name });
    expect(second.sync.getStatus().pendingEvents).toBe(2);
    await second.sync.syncNow();
    const heads = await server.server.getStorage().getHeads('todos', ['logged', 'unlogged']);
    expect(heads.map((head) => [head.documentId, head.data.done])).toEqual([['logged', true], ['unlogged', false]]);
    expect(await server.server.getStorage().countEvents()).toBe(3);
  });
});

describe('control and status', () => {
  it('disable() stops all traffic, enable() resumes, and status$ shows each transition', async () => {
    server = await startServer();
    const a = await client(server.url);
    const seen: Partial<SyncStatus>[] = [];
    a.sync.status$.subscribe(({ enabled, connected }) => seen.push({ enabled, connected }));
    await waitFor(() => a.sync.getStatus().connected, 'connected');
    a.sync.disable();
    expect(a.sync.getStatus()).toMatchObject({ enabled: false, connected: false });
    await a.todos.insert({ id: 'quiet', title: 'no traffic', done: false });
    await sleep(150);
    expect(server.server.getClientsCount()).toBe(0);
    expect(await server.server.getStorage().countEvents()).toBe(0);
    await expect(a.sync.syncNow()).rejects.toMatchObject({ code: 'DISABLED' });

    a.sync.enable();
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'push after enable');
    await waitFor(() => a.sync.getStatus().pendingEvents === 0 && a.sync.getStatus().lastSyncTime !== null, 'the client to see its push acknowledged');
    expect(seen).toContainEqual({ enabled: false, connected: false });
    expect(seen).toContainEqual({ enabled: true, connected: true });
    expect(a.sync.getStatus()).toMatchObject({ enabled: true, connected: true, pendingEvents: 0, error: null });
    expect(a.sync.getStatus().lastSyncTime).toBeGreaterThan(0);
  });

  it('clearPendingEvents() drops unpushed changes and returns each document to the server version it knows', async () => {
    server = await startServer();
    const other = await client(server.url);
    await other.todos.insert({ id: 'pulled', title: 'from the server', done: false });
    await other.sync.syncNow();
    const a = await client(server.url);
    await a.todos.insert({ id: 'pushed', title: 'pushed by a', done: false });
    await a.sync.syncNow();
    expect((await a.todos.findOne('pulled').exec())?.title).toBe('from the server');

    a.sync.disable();
    await (await a.todos.findOne('pulled').exec())!.patch({ title: 'edited, then dropped' });
    await (await a.todos.findOne('pushed').exec())!.patch({ done: true });
    await a.todos.insert({ id: 'new', title: 'never pushed', done: false });
    await waitFor(() => a.sync.getStatus().pendingEvents === 3, 'three changes logged');
    expect(await a.sync.clearPendingEvents()).toBe(3);
    expect(a.sync.getStatus().pendingEvents).toBe(0);
    expect(await contents(a.todos)).toEqual([
      { id: 'pulled', title: 'from the server', done: false },
      { id: 'pushed', title: 'pushed by a', done: false },
    ]);

    // Nothing of it reaches the server, and a later edit is based on the server's version.
    a.sync.enable();
    await a.sync.syncNow();
    expect(await server.server.getStorage().countEvents()).toBe(2);
    await (await a.todos.findOne('pulled').exec())!.patch({ title: 'a real edit' });
    await waitFor(async () => (await server!.server.getStorage().getHeads('todos', ['pulled']))[0]?.data.title === 'a real edit', 'the edit to reach the server');
    expect(a.sync.getConflicts()).toEqual([]);
  });

  it('asks the authToken function again on every reconnect', async () => {
    let current = 'token-1';
    const issued: string[] = [];
    server = await startServer({ authenticate: (_socket, token) => (token === current ? { id: 'u' } : null) });
    const a = await client(server.url, {
      authToken: () => {
        issued.push(current);
        return current;
      },
    });
    await waitFor(() => a.sync.getStatus().connected, 'connected with token-1');
    current = 'token-2';
    server.server.getIo().disconnectSockets(true);
    await waitFor(() => a.sync.getStatus().connected && issued.includes('token-2'), 'reconnected with token-2', 15_000);
    await a.todos.insert({ id: 'after', title: 'after refresh', done: false });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'push with the fresh token');
  });

  it('refuses a collection the database lacks, and a malformed option, naming it', async () => {
    server = await startServer();
    await expect(startClient(server.url, { collections: ['todos', 'nope'] })).rejects.toMatchObject({ code: 'UNKNOWN_COLLECTION', message: expect.stringContaining('"nope"') });
    await expect(startClient(server.url, { syncInterval: -5 })).rejects.toMatchObject({ code: 'INVALID_OPTION', message: expect.stringContaining('syncInterval') });
    await expect(startClient('not a url')).rejects.toMatchObject({ code: 'INVALID_OPTION', message: expect.stringContaining('serverUrl') });
  });
});
