import { describe, expect, it } from 'vitest';
import { createRxDatabase } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { createSyncPlugin } from '../src/client/index.js';
import { closeAfterEach, eventsOnWire, startClient, startServer, todoSchema, uniqueName, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

describe('a client meeting server limits', () => {
  it('pushes in smaller batches when the server takes fewer events per push', async () => {
    server = await startServer({ maxEventsPerPush: 5 });
    const client = await startClient(server.url, { autoSync: false });
    clients.push(client);
    await client.todos.bulkInsert(Array.from({ length: 23 }, (_, i) => ({ id: `b${i}`, title: `t${i}`, done: false })));
    await waitFor(() => client.sync.getStatus().pendingEvents === 23, 'all logged');
    const result = await client.sync.syncNow();
    expect(result).toMatchObject({ success: true, syncedEvents: 23 });
    expect(await server.server.getStorage().countEvents()).toBe(23);
  });

  it('halves batches that are too large in bytes, and sets aside one document that can never fit', async () => {
    server = await startServer({ maxPayloadBytes: 4000 });
    // Batches up to 7000 bytes: over the server's limit, under the size at which socket.io itself drops a message.
    const client = await startClient(server.url, { autoSync: false, maxBatchBytes: 7000 });
    clients.push(client);
    await client.todos.bulkInsert(Array.from({ length: 30 }, (_, i) => ({ id: `s${i}`, title: 'x'.repeat(200), done: false })));
    await client.todos.insert({ id: 'huge', title: 'y'.repeat(5000), done: false });
    await waitFor(() => client.sync.getStatus().pendingEvents === 31, 'all logged');
    const result = await client.sync.syncNow();
    expect(result.success).toBe(true);
    expect(await server.server.getStorage().countEvents()).toBe(30);
    expect(client.sync.getRejectedEvents()).toMatchObject([{ documentId: 'huge', error: { code: 'PAYLOAD_TOO_LARGE' } }]);
    expect(client.sync.getStatus()).toMatchObject({ pendingEvents: 0, rejectedEvents: 1, error: { code: 'PAYLOAD_TOO_LARGE' } });
  });

  it('sets aside an event the server names as malformed, pushes everything logged after it, and retries a refusal that names none', async () => {
    server = await startServer();
    // A server that cannot take one document (say an older version with a stricter check) refuses the
    // whole push and names the event, as the server's own validation does (details.issues[].path; in
    // protocol 4 the path of a row's field, here its data).
    let refuseAll = false;
    server.server.getIo().on('connection', (socket) => {
      const [serve] = socket.listenersAny();
      socket.offAny(serve);
      socket.onAny((type: string, ...args: unknown[]) => {
        const ack = args[args.length - 1] as (reply: unknown) => void;
        const bad = type === 'sync:push' ? eventsOnWire(args[0]).findIndex((event) => event.documentId === 'bad') : -1;
        if (type === 'sync:push' && refuseAll) {
          ack({ ok: false, error: { code: 'INVALID_MESSAGE', message: 'push message: not accepted' } });
        } else if (bad >= 0) {
          ack({ ok: false, error: { code: 'INVALID_MESSAGE', message: 'not accepted', details: { issues: [{ path: `events.${bad}.4`, message: 'not accepted' }] } } });
        } else {
          serve!(type, ...args);
        }
      });
    });
    const client = await startClient(server.url, { autoSync: false });
    clients.push(client);
    await client.todos.bulkInsert([...Array.from({ length: 20 }, (_, i) => ({ id: `g${i}`, title: `t${i}`, done: false })), { id: 'bad', title: 'x', done: false }]);
    await client.todos.insert({ id: 'after', title: 'logged later', done: false });
    await waitFor(() => client.sync.getStatus().pendingEvents === 22, 'all logged');
    const result = await client.sync.syncNow();
    expect(result.success).toBe(true);
    expect(await server.server.getStorage().countEvents()).toBe(21);
    expect(client.sync.getRejectedEvents()).toMatchObject([{ documentId: 'bad', error: { code: 'INVALID_MESSAGE' } }]);
    expect(client.sync.getStatus().pendingEvents).toBe(0);

    // A refusal that names no event says nothing about the events: nothing is set aside, all is retried.
    refuseAll = true;
    await client.todos.insert({ id: 'later', title: 'kept', done: false });
    await waitFor(() => client.sync.getStatus().pendingEvents === 1, 'the write to be logged');
    await expect(client.sync.syncNow()).rejects.toMatchObject({ code: 'INVALID_MESSAGE' });
    expect(client.sync.getRejectedEvents()).toHaveLength(1);
    expect(client.sync.getStatus().pendingEvents).toBe(1);
    expect(await client.todos.findOne('later').exec()).not.toBeNull();
    refuseAll = false;
    expect(await client.sync.syncNow()).toMatchObject({ success: true });
    expect(await server.server.getStorage().countEvents()).toBe(22);
  });

  it('sets aside a change the protocol cannot carry (an id over 1024 characters) with the reason, and syncs the rest', async () => {
    server = await startServer();
    const db = await createRxDatabase({ name: uniqueName('longid'), storage: getRxStorageMemory() });
    await db.addCollections({ todos: { schema: { ...todoSchema, properties: { ...todoSchema.properties, id: { type: 'string', maxLength: 2000 } } } } });
    const sync = await db.addPlugin(createSyncPlugin({ serverUrl: server.url, collections: ['todos'], autoSync: false, logging: { enabled: false } }));
    clients.push({ close: () => db.close().then(() => undefined) } as TestClient);
    await db.todos!.bulkInsert([{ id: 'fine', title: 'ok', done: false }, { id: 'x'.repeat(1500), title: 'too long an id', done: false }]);
    await waitFor(() => sync.getStatus().pendingEvents === 2, 'both logged');
    expect(await sync.syncNow()).toMatchObject({ success: true });
    expect(await server.server.getStorage().countEvents()).toBe(1);
    expect(sync.getRejectedEvents()).toMatchObject([{ error: { code: 'INVALID_MESSAGE', message: expect.stringContaining('documentId') } }]);
  });
});
