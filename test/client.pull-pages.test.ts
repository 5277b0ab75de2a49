/**
 * Round trips a sync run does not wait for. A pull of several pages asks for
 * the next page while it writes the one it has, so that on a slow link (or
 * with a slow local storage) the round trip overlaps the write; the
 * checkpoint still only moves as pages are written. And the first run on a
 * connection sends its pull without waiting for the subscription's answer.
 */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from 'socket.io';
import { afterEach, describe, expect, it } from 'vitest';
import { createRxDatabase, type RxCollection } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { createSyncPlugin } from '../src/client/index.js';
import { REMOTE_CONTEXT } from '../src/client/replicator.js';
import { Transport } from '../src/client/transport.js';
import { bareSyncIo, closeAfterEach, contents, push, rawEvent, rawSocket, request, sleep, startClient, startServer, todoSchema, uniqueName, waitFor, type TestClient, type TestServer, type Todo, outcome } from './helpers.js';
import { MESSAGE, toPullPage, type StoredEvent } from '../src/shared/protocol/index.js';

/** Events in the form a fake server of the current protocol pulls them in. */
const pullPage = (events: readonly object[]) => toPullPage(events as StoredEvent[]);

let server: TestServer | undefined;
const clients: TestClient[] = [];
closeAfterEach(clients, () => server);

/** A server holding `count` documents written by another client. */
async function serverWith(count: number): Promise<TestClient> {
  server = await startServer();
  const writer = await startClient(server.url, { autoSync: false });
  clients.push(writer);
  const docs = Array.from({ length: count }, (_, i) => ({ id: `doc-${String(i).padStart(3, '0')}`, title: `title ${i}`, done: i % 2 === 0 }));
  expect((await writer.todos.bulkInsert(docs)).error).toEqual([]);
  expect(await writer.sync.syncNow()).toMatchObject({ success: true, syncedEvents: count });
  return writer;
}

/** Runs `around(call, write)` for each write of pulled documents into the client's collection. */
function wrapPulledWrites(client: TestClient, around: (call: number, write: () => Promise<unknown>) => Promise<unknown>): void {
  const instance = client.todos.internalStorageInstance;
  const bulkWrite = instance.bulkWrite.bind(instance);
  let calls = 0;
  instance.bulkWrite = ((rows, context) =>
    context === REMOTE_CONTEXT ? around(++calls, () => bulkWrite(rows, context)) : bulkWrite(rows, context)) as typeof instance.bulkWrite;
}

describe('a pull of several pages', () => {
  it('asks for the next page before the page it has is written', async () => {
    await serverWith(120);
    const reader = await startClient(server!.url, { autoSync: false, pullBatchSize: 50 });
    clients.push(reader);
    let pulls = 0;
    server!.server.events.on('pull', () => pulls++);
    wrapPulledWrites(reader, async (call, write) => {
      // A page is written only once the server has answered the next one: asked for early, it is
      // answered while this page waits; asked for after the write, never, and the wait fails.
      if (call < 3) await waitFor(() => pulls > call, `page ${call + 1} to be answered while page ${call} waits to be written`, 5000);
      return write();
    });

    expect(await reader.sync.syncNow()).toMatchObject({ success: true, syncedEvents: 120 });
    expect(await reader.todos.count().exec()).toBe(120);
    // Pages of 50, 50 and 20.
    expect(pulls).toBe(3);
  });

  it('ends the run cleanly when the connection is lost while a page is written: no unhandled failure, no page after disable()', async () => {
    await serverWith(120);
    const reader = await startClient(server!.url, { autoSync: false, pullBatchSize: 50, retry: { maxRetries: 0, retryDelay: 50, useExponentialBackoff: false } });
    clients.push(reader);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      wrapPulledWrites(reader, async (call, write) => {
        if (call === 1) {
          // The request for the next page is in flight now; disabling drops the connection under it.
          reader.sync.disable();
          await sleep(200);
        }
        return write();
      });
      const result = await outcome(reader.sync.syncNow());
      expect(result.success).toBe(false);
      expect(['DISABLED', 'NOT_CONNECTED']).toContain(result.error?.code);
      await sleep(100);
      expect(unhandled).toEqual([]);
      // The first page was written; nothing after disable().
      expect(await reader.todos.count().exec()).toBe(50);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    // Enabled again, the next sync (it connects: autoSync is off here) picks up after the first page.
    reader.sync.enable();
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    expect(await reader.todos.count().exec()).toBe(120);
  });

  it('stops at the last page written when a page cannot be written, and the next run goes on from there', async () => {
    const writer = await serverWith(120);
    // No retries of its own: the test runs the next sync itself.
    const reader = await startClient(server!.url, { autoSync: false, pullBatchSize: 50, retry: { maxRetries: 0, retryDelay: 50, useExponentialBackoff: false } });
    clients.push(reader);
    let failing = true;
    const pulled: number[] = [];
    server!.server.events.on('pull', ({ events }) => pulled.push(events));
    wrapPulledWrites(reader, async (call, write) => {
      if (failing && call === 2) throw new Error('the disk is full');
      return write();
    });

    const failed = await outcome(reader.sync.syncNow());
    expect(failed.success).toBe(false);
    // The first page is written and kept; nothing of the page that failed, nor of the one asked for early.
    expect(await reader.todos.count().exec()).toBe(50);

    // The page asked for early is answered all the same; it is dropped.
    await waitFor(() => pulled.length === 3, 'the third page to be answered');
    failing = false;
    pulled.length = 0;
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    expect(await contents(reader.todos)).toEqual(await contents(writer.todos));
    // Picked up after the first page: its 50 documents were not sent again.
    expect(pulled.reduce((sum, events) => sum + events, 0)).toBe(70);
  });
});

describe('a collection added while the subscription is unanswered', () => {
  it('is subscribed to all the same', async () => {
    server = await startServer();
    const subscribe = Transport.prototype.subscribe;
    const sent: string[][] = [];
    // The subscription's answer is late, so that addCollection comes while it is on its way.
    Transport.prototype.subscribe = function (message) {
      sent.push([...message.collections]);
      return subscribe.call(this, message).then(async (reply) => {
        await sleep(200);
        return reply;
      });
    };
    try {
      const db = await createRxDatabase<{ todos: RxCollection<Todo>; notes: RxCollection<Todo> }>({ name: uniqueName('late'), storage: getRxStorageMemory() });
      await db.addCollections({ todos: { schema: todoSchema }, notes: { schema: todoSchema } });
      const sync = await db.addPlugin(createSyncPlugin({ serverUrl: server.url, collections: ['todos'], autoSync: false, logging: { enabled: false } }));
      clients.push({ db: db as never, todos: db.todos, sync, name: db.name, close: () => db.close().then(() => undefined) });
      const run = sync.syncNow();
      await waitFor(() => sent.length === 1, 'the subscription to be sent');
      sync.addCollection('notes');
      expect(await run).toMatchObject({ success: true });
      const rooms = server.server.getIo().of('/').adapter.rooms;
      const [socketId] = [...server.server.getIo().of('/').sockets.keys()];
      await waitFor(() => rooms.get('collection:notes')?.has(socketId!) ?? false, 'the socket to join the notes room');
      expect(sent.at(-1)).toEqual(['todos', 'notes']);
    } finally {
      Transport.prototype.subscribe = subscribe;
    }
  });
});

describe('the first sync run on a connection', () => {
  let httpServer: HttpServer | undefined;
  let io: Server | undefined;
  afterEach(async () => {
    await io?.close();
    io = undefined;
    httpServer = undefined;
  });

  /** A fake sync server: subscriptions are answered after `subscribeDelay` ms with `subscribeReply`; pulls at once with `pullReply`. */
  async function fakeServer(subscribeDelay: number, subscribeReply: unknown, pullReply: unknown) {
    const seen: { what: string; at: number }[] = [];
    httpServer = createServer();
    io = bareSyncIo(httpServer);
    io.on('connection', (socket) => {
      socket.on('sync:subscribe', (_message, ack) => {
        seen.push({ what: 'subscribe', at: performance.now() });
        setTimeout(() => {
          seen.push({ what: 'subscribe answered', at: performance.now() });
          ack(subscribeReply);
        }, subscribeDelay);
      });
      socket.on('sync:pull', (_message, ack) => {
        seen.push({ what: 'pull', at: performance.now() });
        ack(pullReply);
      });
    });
    await new Promise<void>((resolve) => httpServer!.listen(0, '127.0.0.1', resolve));
    return { url: `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`, seen };
  }

  const oneEvent = {
    ok: true,
    ...pullPage([{ id: 'evt-00000001', collection: 'todos', documentId: 'x', op: 'insert', data: { id: 'x', title: 't', done: false }, hlc: '001700000000000-000000-s', seq: 1, clientId: 'other' }]),
    checkpoint: 1,
    hasMore: false,
  };

  it('sends its pull without waiting for the subscription to be answered', async () => {
    const { url, seen } = await fakeServer(300, { ok: true, collections: ['todos'] }, oneEvent);
    const client = await startClient(url, { autoSync: false });
    clients.push(client);
    expect(await client.sync.syncNow()).toMatchObject({ success: true });
    expect(seen.map((step) => step.what)).toEqual(['subscribe', 'pull', 'subscribe answered']);
    expect(await client.todos.count().exec()).toBe(1);
  });

  it('subscribes again after a reconnection, also when the connection dropped right after the subscription was answered', async () => {
    httpServer = createServer();
    io = bareSyncIo(httpServer);
    let connections = 0;
    const subscribedOn: number[] = [];
    io.on('connection', (socket) => {
      const connection = ++connections;
      socket.on('sync:subscribe', (_message, ack) => {
        subscribedOn.push(connection);
        ack({ ok: true, collections: ['todos'] });
        // The answer and the end of the connection in one step.
        if (connection === 1) socket.disconnect(true);
      });
      socket.on('sync:pull', (_message, ack) => ack({ ok: true, events: [], checkpoint: 0, hasMore: false }));
      socket.on('sync:push', (_message, ack) => ack({ ok: true, results: [] }));
    });
    await new Promise<void>((resolve) => httpServer!.listen(0, '127.0.0.1', resolve));
    const client = await startClient(`http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`);
    clients.push(client);
    await waitFor(() => subscribedOn.includes(2), 'a subscription on the second connection');
  });

  it('writes nothing it pulled when the subscription is refused', async () => {
    const refusal = { ok: false, error: { code: 'UNKNOWN_COLLECTION', message: 'unknown collection "todos"' } };
    const { url, seen } = await fakeServer(100, refusal, oneEvent);
    const client = await startClient(url, { autoSync: false, retry: { maxRetries: 0, retryDelay: 50, useExponentialBackoff: false } });
    clients.push(client);
    const result = await outcome(client.sync.syncNow());
    expect(result).toMatchObject({ success: false, error: { code: 'UNKNOWN_COLLECTION' } });
    expect(seen.map((step) => step.what)).toEqual(['subscribe', 'pull', 'subscribe answered']);
    expect(await client.todos.count().exec()).toBe(0);
  });
});

describe('the pull that follows live messages', () => {
  // It goes out from a sync run, whose first step waits its turn behind the live messages' writes.
  it('is asked only once every live message received so far is applied, so that it names their events as held', async () => {
    server = await startServer();
    const reader = await startClient(server.url);
    clients.push(reader);
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    // A slow device: applying a live message takes longer than the delay before the pull that follows it.
    wrapPulledWrites(reader, async (_call, write) => {
      await sleep(300);
      return write();
    });
    // Sequence 1 is another collection's, never sent to the reader: the live events after it leave a
    // gap, so a pull must follow them.
    const other = await rawSocket(server.url);
    await push(other, [rawEvent({ collection: 'products', documentId: 'p' })]);
    other.close();
    let resent = 0;
    server.server.events.on('pull', ({ events }) => (resent += events));
    const synced = reader.sync.getStatus().lastSyncTime;

    const writer = await startClient(server.url, { autoSync: false, batchSize: 2 });
    clients.push(writer);
    await writer.todos.bulkInsert(['a', 'b', 'c', 'd'].map((id) => ({ id, title: id, done: false })));
    // Two pushes, two live messages, arriving together; the second is applied while the first's pull would be due.
    expect(await writer.sync.syncNow()).toMatchObject({ success: true, syncedEvents: 4 });
    await waitFor(async () => (await reader.todos.count().exec()) === 4, 'the reader to apply both live messages');
    await waitFor(() => reader.sync.getStatus().lastSyncTime !== synced && !reader.sync.getStatus().syncing, 'the reader\'s pull');
    // No pull sent back what had come live: the first message's pull did not go out while the second waited.
    expect(resent).toBe(0);
  });

  it('is not asked when the live events leave no gap after the checkpoint: the checkpoint moves without it', async () => {
    server = await startServer();
    const pulls: { checkpoint: number; have?: unknown }[] = [];
    server.server.getIo().on('connection', (socket) => {
      socket.onAny((type: string, message: { checkpoint: number; have?: unknown }) => {
        if (type === MESSAGE.pull) pulls.push(message);
      });
    });
    const reader = await startClient(server.url);
    clients.push(reader);
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    const writer = await rawSocket(server.url);
    try {
      const write = (collection: string, documentId: string) => push(writer, [rawEvent({ collection, documentId })]);
      const before = pulls.length;

      // Sequences 1 and 2, both sent live: nothing is missing, so no pull follows.
      await write('todos', 'a');
      await write('todos', 'b');
      await waitFor(async () => (await reader.todos.count().exec()) === 2, 'both live events applied');
      await sleep(400);
      expect(pulls.length).toBe(before);
      // The checkpoint moved all the same: the next pull starts after them.
      expect(await reader.sync.syncNow()).toMatchObject({ success: true });
      expect(pulls.at(-1)).toMatchObject({ checkpoint: 2 });

      // Sequence 3 is another collection's, never sent to this reader; 4 comes live. The gap takes a pull.
      const afterSync = pulls.length;
      await write('products', 'p');
      await write('todos', 'c');
      await waitFor(() => pulls.length > afterSync, 'the pull that closes the gap');
      await waitFor(() => !reader.sync.getStatus().syncing, 'that pull to end');
      expect(pulls[afterSync]).toMatchObject({ checkpoint: 2, have: [4] });
      expect(await reader.sync.syncNow()).toMatchObject({ success: true });
      expect(pulls.at(-1)).toMatchObject({ checkpoint: 4 });
    } finally {
      writer.close();
    }
  });

  it('is still asked when a later live message, out of sequence order, leaves no gap below itself but one below an earlier message', async () => {
    // A fake server: 1-3 by the first pull; then 6 live, then 4 live (commits and relays can arrive out
    // of order); 5 never comes live (a reader an authorize hook could not decide on, a lost relay).
    const event = (seq: number, id: string) => ({
      id: `event-000${seq}`, collection: 'todos', documentId: id, op: 'insert', data: { id, title: id, done: false },
      hlc: `00170000000000${seq}-000000-other`, seq, clientId: 'other',
    });
    const all = ['a', 'b', 'c', 'd', 'e', 'f'].map((id, i) => event(i + 1, id));
    let visible = 3;
    const pulls: { checkpoint: number }[] = [];
    const http = createServer();
    const io = bareSyncIo(http);
    io.on('connection', (socket) => {
      socket.on('sync:subscribe', (_m, ack) => ack({ ok: true, collections: ['todos'] }));
      socket.on('sync:push', (_m, ack) => ack({ ok: true, results: [] }));
      socket.on('sync:pull', (m: { checkpoint: number }, ack) => {
        pulls.push(m);
        ack({ ok: true, ...pullPage(all.slice(0, visible).filter((e) => e.seq > m.checkpoint)), checkpoint: visible, hasMore: false });
      });
    });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    try {
      const reader = await startClient(`http://127.0.0.1:${(http.address() as AddressInfo).port}`);
      clients.push(reader);
      await waitFor(async () => (await reader.todos.count().exec()) === 3, 'the first pull');
      await waitFor(() => !reader.sync.getStatus().syncing, 'the first run to end');
      const before = pulls.length;
      visible = 6;
      const [socket] = await io.fetchSockets();
      socket!.emit('sync:events', { events: [all[5]] });
      await sleep(20);
      socket!.emit('sync:events', { events: [all[3]] });
      // 4 follows 3 with no gap, but 5 is still missing below 6: the pull must go out all the same.
      await waitFor(async () => (await reader.todos.count().exec()) === 6, 'the pull to bring 5', 3000);
      expect(pulls.length).toBeGreaterThan(before);
      expect(pulls.at(-1)).toMatchObject({ checkpoint: 3 });
    } finally {
      await closeFakeServer(io, http);
    }
  });
});

/** Stops a fake server started in a test. */
async function closeFakeServer(io: Server, http: HttpServer): Promise<void> {
  await io.close();
  http.closeAllConnections();
}

