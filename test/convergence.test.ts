/**
 * Randomized proof of convergence (invariant 7) and of last-write-wins
 * semantics (invariant 8): several clients on real sockets make random
 * writes and deletes, go offline, restart, and lose acknowledgements; once
 * all are online and idle, every client holds exactly the server's state.
 *
 * Seeded and reproducible: FC_SEED=<seed> reruns a failure, FC_NUM_RUNS=<n>
 * runs more cases (the default keeps `npm test` fast).
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import type { ConflictResolution } from '../src/client/index.js';
import { MemorySyncStorage } from '../src/server/index.js';
import { contents, openDatabase, sleep, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer, type Todo } from './helpers.js';

const CLIENTS = 3;
const DOC_IDS = ['d0', 'd1', 'd2', 'd3'];
const NUM_RUNS = Number(process.env.FC_NUM_RUNS ?? 60);
const SEED = process.env.FC_SEED ? Number(process.env.FC_SEED) : Date.now() % 2 ** 31;

type Command =
  | { kind: 'put'; client: number; doc: string; done: boolean }
  | { kind: 'remove'; client: number; doc: string }
  | { kind: 'bulk'; client: number; docs: string[]; done: boolean }
  | { kind: 'offline'; client: number }
  | { kind: 'online'; client: number }
  | { kind: 'restart'; client: number }
  | { kind: 'write-unlogged'; client: number; doc: string; done: boolean }
  | { kind: 'drop-ack' }
  | { kind: 'pause'; ms: number };

const client = fc.integer({ min: 0, max: CLIENTS - 1 });
const doc = fc.constantFrom(...DOC_IDS);
const command: fc.Arbitrary<Command> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('put' as const), client, doc, done: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('remove' as const), client, doc }) },
  // Several documents in one write: with pushes of two, a bulk of three or four is logged in steps.
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('bulk' as const), client, docs: fc.shuffledSubarray(DOC_IDS, { minLength: 2 }), done: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('offline' as const), client }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('online' as const), client }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('restart' as const), client }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('write-unlogged' as const), client, doc, done: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'drop-ack' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('pause' as const), ms: fc.integer({ min: 1, max: 30 }) }) },
);

/** The server's state as documents, from its event log alone. */
async function serverState(storage: MemorySyncStorage): Promise<Todo[]> {
  const heads = new Map<string, { deleted: boolean; data: Todo }>();
  for (const event of await storage.getEventsAfter(0)) heads.set(event.documentId, { deleted: event.op === 'delete', data: event.data as unknown as Todo });
  return [...heads.values()].filter((head) => !head.deleted).map((head) => head.data).sort((a, b) => a.id.localeCompare(b.id));
}

async function run(commands: Command[], conflictResolution: ConflictResolution) {
  const storage = new MemorySyncStorage();
  let dropAck = false;
  let server: TestServer | undefined;
  const save = storage.saveEvents.bind(storage);
  storage.saveEvents = async (events) => {
    const results = await save(events);
    if (dropAck) {
      dropAck = false;
      server?.server.getIo().disconnectSockets(true);
    }
    return results;
  };
  server = await startServer({ storage });
  const names = Array.from({ length: CLIENTS }, () => uniqueName('conv'));
  const options = { conflictResolution, syncInterval: 200, batchSize: 2 };
  const clients: TestClient[] = [];
  const offline = new Set<number>();
  for (const name of names) clients.push(await startClient(server.url, { name, ...options }));
  /** The last write made to each document, in real time: what last-write-wins must keep. */
  const lastWrite = new Map<string, Todo | null>();
  let writeCount = 0;
  try {
    for (const cmd of commands) {
      switch (cmd.kind) {
        case 'put': {
          const c = clients[cmd.client]!;
          const title = `w${writeCount++}-c${cmd.client}`;
          const data: Todo = { id: cmd.doc, title, done: cmd.done };
          await c.todos.upsert(data);
          lastWrite.set(cmd.doc, data);
          await sleep(2); // distinct write times
          break;
        }
        case 'bulk': {
          const c = clients[cmd.client]!;
          const docs = cmd.docs.map((id): Todo => ({ id, title: `w${writeCount++}-c${cmd.client}`, done: cmd.done }));
          await c.todos.bulkUpsert(docs);
          for (const data of docs) lastWrite.set(data.id, data);
          await sleep(2);
          break;
        }
        case 'remove': {
          const c = clients[cmd.client]!;
          const existing = await c.todos.findOne(cmd.doc).exec();
          if (existing) {
            await existing.remove();
            lastWrite.set(cmd.doc, null);
            await sleep(2);
          }
          break;
        }
        case 'offline':
          clients[cmd.client]!.sync.disable();
          offline.add(cmd.client);
          break;
        case 'online':
          clients[cmd.client]!.sync.enable();
          offline.delete(cmd.client);
          break;
        case 'restart': {
          await clients[cmd.client]!.close();
          clients[cmd.client] = await startClient(server.url, { name: names[cmd.client]!, ...options });
          if (offline.has(cmd.client)) clients[cmd.client]!.sync.disable();
          break;
        }
        case 'write-unlogged': {
          // A write that reached storage while the plugin was not running (a crash between write and log).
          await clients[cmd.client]!.close();
          const bare = await openDatabase(names[cmd.client]!);
          const data: Todo = { id: cmd.doc, title: `w${writeCount++}-c${cmd.client}-unlogged`, done: cmd.done };
          await bare.todos.upsert(data);
          lastWrite.set(cmd.doc, data);
          await sleep(2);
          await bare.close();
          clients[cmd.client] = await startClient(server.url, { name: names[cmd.client]!, ...options });
          if (offline.has(cmd.client)) clients[cmd.client]!.sync.disable();
          break;
        }
        case 'drop-ack':
          dropAck = true;
          break;
        case 'pause':
          await sleep(cmd.ms);
          break;
      }
    }
    // Everyone online; sync until idle.
    dropAck = false;
    for (const c of clients) c.sync.enable();
    const expected = async () => serverState(storage);
    await waitFor(async () => {
      for (const c of clients) await c.sync.syncNow();
      if (clients.some((c) => c.sync.getStatus().pendingEvents > 0 || c.sync.getConflicts().length > 0)) return false;
      const truth = JSON.stringify(await expected());
      for (const c of clients) if (JSON.stringify(await contents(c.todos)) !== truth) return false;
      return true;
    }, 'every client to hold the server state', 20_000);
    return { final: await expected(), lastWrite, storage };
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await server.stop();
  }
}

afterAll(() => {
  // Printed so that any run, failing or not, can be repeated exactly.
  console.log(`convergence: seed ${SEED}, ${NUM_RUNS} runs per strategy (FC_SEED / FC_NUM_RUNS to change)`);
});

describe('randomized convergence', () => {
  it('last-write-wins: every client equals the server, and each document holds its last write', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(command, { minLength: 5, maxLength: 40 }), async (commands) => {
        const { final, lastWrite } = await run(commands, 'last-write-wins');
        for (const id of DOC_IDS) {
          const want = lastWrite.get(id);
          const got = final.find((d) => d.id === id) ?? null;
          if (want === undefined) expect(got).toBeNull();
          else expect(got, `document ${id}`).toEqual(want);
        }
      }),
      { seed: SEED, numRuns: NUM_RUNS, endOnFailure: true },
    );
  }, 120_000);

  it('merge: every client equals the server; a field both sides wrote (the title) holds the last write', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(command, { minLength: 5, maxLength: 40 }), async (commands) => {
        const { final, lastWrite } = await run(commands, 'merge');
        // Every write sets a new title, so the title is always changed on both sides: the later clock's
        // stands. A delete against an update is last-write-wins. Only \`done\` may merge either way.
        for (const id of DOC_IDS) {
          const want = lastWrite.get(id);
          const got = final.find((d) => d.id === id) ?? null;
          if (!want) expect(got, `document ${id}`).toBeNull();
          else expect(got?.title, `document ${id}`).toBe(want.title);
        }
      }),
      { seed: SEED, numRuns: NUM_RUNS, endOnFailure: true },
    );
  }, 120_000);
});
