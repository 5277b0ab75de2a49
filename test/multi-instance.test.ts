/**
 * Several server instances behind one deployment: two instances on different
 * ports share one PostgreSQL database and fan live changes out through Redis
 * (@socket.io/redis-adapter). A client on one instance sees changes made on
 * the other live, moves between instances without losing or repeating
 * anything, and concurrent writers through both converge (invariants 3, 4, 7).
 */
import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { createAdapter } from '@socket.io/redis-adapter';
import fc from 'fast-check';
import { createClient } from 'redis';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSyncPlugin } from '../src/client/index.js';
import { PostgresSyncStorage } from '../src/server/storage/index.js';
import { MESSAGE } from '../src/shared/protocol/index.js';
import { collectLive, contents, openDatabase, push, rawEvent, rawSocket, request, sleep, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer, type Todo } from './helpers.js';
import { REDIS, createTestDatabase, serviceReady, type TestDatabase } from './services.js';

interface Instance extends TestServer {
  storage: PostgresSyncStorage;
}

/** One server instance as a deployment runs it: its own pool, its own Redis connections. */
async function startInstance(connectionString: string, redisKey: string): Promise<Instance> {
  const pub = createClient({ url: REDIS.url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const storage = new PostgresSyncStorage({ connectionString, poolSize: 4 });
  const server = await startServer({ storage, adapter: createAdapter(pub, sub, { key: redisKey }) });
  return {
    ...server,
    storage,
    async stop() {
      await server.stop();
      await storage.close();
      await Promise.allSettled([pub.quit(), sub.quit()]);
    },
  };
}

/** The server's state as documents, from its event log alone (the last event of each document wins). */
async function serverState(storage: PostgresSyncStorage): Promise<Todo[]> {
  const heads = new Map<string, { deleted: boolean; data: Todo }>();
  for (const event of await storage.getEventsAfter(0)) heads.set(event.documentId, { deleted: event.op === 'delete', data: event.data as unknown as Todo });
  return [...heads.values()].filter((head) => !head.deleted).map((head) => head.data).sort((a, b) => a.id.localeCompare(b.id));
}

const idle = (client: TestClient) => {
  const status = client.sync.getStatus();
  return status.connected && !status.syncing && status.pendingEvents === 0 && status.lastSyncTime !== null;
};

describe.skipIf(!((await serviceReady('postgres')) && (await serviceReady('redis'))))('two server instances sharing PostgreSQL and Redis', () => {
  let database: TestDatabase;
  let a: Instance;
  let b: Instance;
  const clients: TestClient[] = [];

  async function client(instance: Instance, options: Parameters<typeof startClient>[1] = {}) {
    const started = await startClient(instance.url, options);
    clients.push(started);
    return started;
  }

  beforeEach(async () => {
    database = await createTestDatabase();
    // One channel prefix per test, so parallel runs on the same Redis never hear each other.
    const redisKey = `rxos-test-${randomBytes(6).toString('hex')}`;
    // Started together: both create the schema at once, as instances of a fresh deployment do.
    [a, b] = await Promise.all([startInstance(database.connectionString, redisKey), startInstance(database.connectionString, redisKey)]);
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
    await Promise.allSettled([a?.stop(), b?.stop()]);
    await database?.drop();
  });

  it('a client on instance A sees the changes a client on instance B makes, live', async () => {
    const onA = await client(a);
    const onB = await client(b);
    await waitFor(() => idle(onA) && idle(onB), 'both clients to connect and subscribe');
    expect([a.server.getClientsCount(), b.server.getClientsCount()]).toEqual([1, 1]);

    // No syncNow, and the periodic pull is 30 s away: only a live message through Redis brings these.
    await onB.todos.insert({ id: 'from-b', title: 'written on B', done: false });
    await waitFor(async () => (await onA.todos.findOne('from-b').exec()) !== null, 'A to see the insert made on B', 5000);

    await (await onA.todos.findOne('from-b').exec())!.patch({ done: true });
    await waitFor(async () => (await onB.todos.findOne('from-b').exec())?.done === true, 'B to see the update made on A', 5000);

    await (await onB.todos.findOne('from-b').exec())!.remove();
    await waitFor(async () => (await onA.todos.findOne('from-b').exec()) === null, 'A to see the delete made on B', 5000);

    await waitFor(() => idle(onA) && idle(onB), 'both clients to settle');
    expect(await a.storage.countEvents()).toBe(3);
    expect(await contents(onA.todos)).toEqual([]);
    expect(await contents(onB.todos)).toEqual([]);
  });

  it('live messages cross instances however the adapter was set (option or socketOptions), with the writer alone on its instance', async () => {
    const redisKey = `rxos-test-${randomBytes(6).toString('hex')}`;
    const connections: ReturnType<typeof createClient>[] = [];
    const adapter = async () => {
      const pub = createClient({ url: REDIS.url });
      const sub = pub.duplicate();
      await Promise.all([pub.connect(), sub.connect()]);
      connections.push(pub, sub);
      return createAdapter(pub, sub, { key: redisKey });
    };
    const viaOption = await startServer({ adapter: await adapter() });
    const viaSocketOptions = await startServer({ socketOptions: { adapter: await adapter() } as never });
    const sockets: Awaited<ReturnType<typeof rawSocket>>[] = [];
    try {
      for (const [writerOn, readerOn] of [[viaOption, viaSocketOptions], [viaSocketOptions, viaOption]] as const) {
        const writer = await rawSocket(writerOn.url);
        const reader = await rawSocket(readerOn.url);
        sockets.push(writer, reader);
        const live = collectLive(reader);
        await request(writer, MESSAGE.subscribe, { collections: ['todos'] });
        await request(reader, MESSAGE.subscribe, { collections: ['todos'] });
        const event = rawEvent({ documentId: `doc-${sockets.length}` });
        expect(await push(writer, [event])).toMatchObject({ ok: true });
        await waitFor(() => live.some((received) => received.id === event.id), 'the reader on the other instance to get the event live', 5000);
      }
    } finally {
      sockets.forEach((socket) => socket.close());
      await Promise.allSettled([viaOption.stop(), viaSocketOptions.stop()]);
      await Promise.allSettled(connections.map((connection) => connection.quit()));
    }
  });

  it('catch-up after reconnecting to the other instance is exact', async () => {
    const name = uniqueName('roamer');
    const roamer = await client(a, { name });
    const stay = await client(b);
    for (let i = 0; i < 5; i++) await roamer.todos.insert({ id: `r${i}`, title: `roamer ${i}`, done: false });
    for (let i = 0; i < 5; i++) await stay.todos.insert({ id: `s${i}`, title: `stay ${i}`, done: false });
    await waitFor(async () => idle(roamer) && idle(stay) && (await roamer.todos.count().exec()) === 10 && (await stay.todos.count().exec()) === 10, 'both to hold all 10');

    // The roamer leaves instance A, writing offline on its way out.
    roamer.sync.disable();
    for (let i = 5; i < 8; i++) await roamer.todos.insert({ id: `r${i}`, title: `roamer offline ${i}`, done: false });
    await (await roamer.todos.findOne('s0').exec())!.patch({ title: 'edited offline by the roamer' });
    await waitFor(() => roamer.sync.getStatus().pendingEvents === 4, 'the offline writes to be logged');
    await roamer.close();

    // Meanwhile, on instance B.
    for (let i = 5; i < 25; i++) await stay.todos.insert({ id: `s${i}`, title: `stay ${i}`, done: false });
    await (await stay.todos.findOne('s1').exec())!.patch({ done: true });
    await (await stay.todos.findOne('r0').exec())!.remove();
    await waitFor(() => idle(stay), 'B’s writes to be stored');
    const writesMade = 5 + 5 + 4 + 20 + 1 + 1;

    // The roamer comes back through instance B. It resumes from its checkpoint, never from 0.
    const pulls: number[] = [];
    b.server.getIo().on('connection', (socket) =>
      socket.onAny((event: string, message: { checkpoint?: number }) => {
        if (event === 'sync:pull') pulls.push(message.checkpoint ?? -1);
      }),
    );
    const db = await openDatabase(name);
    const applied: string[] = [];
    db.todos.$.subscribe((change) => applied.push(`${change.operation}:${change.documentId}`));
    const sync = await db.addPlugin(
      createSyncPlugin({ serverUrl: b.url, collections: ['todos'], logging: { enabled: false }, retry: { maxRetries: 5, retryDelay: 50, useExponentialBackoff: true } }),
    );
    const back: TestClient = { db, todos: db.todos, sync, name, close: () => db.close().then(() => undefined) };
    clients.push(back);
    expect(sync.getStatus().pendingEvents).toBe(4);
    await waitFor(async () => idle(back) && (await back.todos.count().exec()) === 32, 'the roamer to catch up through B');
    await waitFor(async () => (await stay.todos.count().exec()) === 32 && idle(stay), 'B’s client to get the roamer’s offline writes');

    expect(pulls.length).toBeGreaterThan(0);
    expect(pulls.every((checkpoint) => checkpoint > 0)).toBe(true);
    // Exactly what happened while it was away, each applied once; none of its own writes echoed back.
    const missed = [...Array.from({ length: 20 }, (_, i) => `INSERT:s${i + 5}`), 'UPDATE:s1', 'DELETE:r0'];
    expect(applied.sort()).toEqual(missed.sort());

    expect(await a.storage.countEvents()).toBe(writesMade);
    const expected = await serverState(b.storage);
    expect(expected).toHaveLength(32);
    expect(expected.find((todo) => todo.id === 's0')!.title).toBe('edited offline by the roamer');
    expect(await contents(back.todos)).toEqual(expected);
    expect(await contents(stay.todos)).toEqual(expected);
  });

  it('concurrent writers through both instances all end with the server’s state', async () => {
    const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31);
    const CLIENTS_PER_INSTANCE = 4;
    const WRITES_PER_CLIENT = 80;
    const SHARED = ['shared-0', 'shared-1', 'shared-2', 'shared-3'];
    try {
      const writers = await Promise.all(
        Array.from({ length: CLIENTS_PER_INSTANCE * 2 }, (_, i) => client(i % 2 === 0 ? a : b)),
      );
      await waitFor(() => writers.every(idle), 'every writer to connect');
      // Each writer: a seeded mix of inserts of its own documents, edits of shared ones, and deletes.
      const plans = fc.sample(
        fc.array(fc.record({ kind: fc.constantFrom('insert', 'insert', 'edit', 'edit', 'remove'), shared: fc.constantFrom(...SHARED), pause: fc.integer({ min: 0, max: 3 }) }), {
          minLength: WRITES_PER_CLIENT,
          maxLength: WRITES_PER_CLIENT,
        }),
        { seed, numRuns: writers.length },
      );
      await Promise.all(
        writers.map(async (writer, w) => {
          const own: string[] = [];
          for (const [n, step] of plans[w]!.entries()) {
            if (step.kind === 'insert' || own.length === 0) {
              const id = `w${w}-${n}`;
              own.push(id);
              await writer.todos.insert({ id, title: `by ${w}`, done: false, priority: n });
            } else if (step.kind === 'edit') {
              await writer.todos.upsert({ id: step.shared, title: `edit ${n} by ${w}`, done: n % 2 === 0, priority: n });
            } else {
              await (await writer.todos.findOne(own.shift()!).exec())?.remove();
            }
            if (step.pause > 0) await sleep(step.pause);
          }
        }),
      );

      await waitFor(
        async () => {
          if (!writers.every(idle)) return false;
          const expected = await serverState(a.storage);
          for (const writer of writers) if (!isDeepStrictEqual(await contents(writer.todos), expected)) return false;
          return true;
        },
        'every writer to equal the server',
        20_000,
      );
      const expected = await serverState(b.storage);
      for (const writer of writers) expect(await contents(writer.todos)).toEqual(expected);
      // The event log and the document heads of both instances tell the same story.
      const heads = await a.storage.getHeads('todos', expected.map((todo) => todo.id));
      expect(heads.map((head) => head.data)).toEqual(expected);
      expect(expected.filter((todo) => SHARED.includes(todo.id)).length).toBe(SHARED.length);
      // No retry stored twice: a writer's own document has at most one insert and one delete.
      const events = await b.storage.getEventsAfter(0);
      expect(events.length).toBeLessThanOrEqual(writers.length * WRITES_PER_CLIENT);
      const perDocument = new Map<string, string[]>();
      for (const event of events) if (!SHARED.includes(event.documentId)) perDocument.set(event.documentId, [...(perDocument.get(event.documentId) ?? []), event.op]);
      const repeated = [...perDocument].filter(([, ops]) => ops.filter((op) => op === 'insert').length > 1 || ops.filter((op) => op === 'delete').length > 1);
      expect(repeated).toEqual([]);
    } catch (error) {
      throw new Error(`failed with FC_SEED=${seed}: ${(error as Error).message}`, { cause: error });
    }
  });
});
