/**
 * Randomized proof of convergence (invariant 7) under every conflict
 * strategy: several clients on real sockets make random writes and deletes,
 * go offline, restart, crash between a write and its log entry, and lose
 * acknowledgements. Once all are online and idle (and, under `manual`, the
 * app has decided every kept conflict), each strategy's run asserts:
 *
 * - converged: every device holds exactly the documents of the server's
 *   current heads, nothing is pending, no conflict is left, awaitInSync()
 *   resolves on every device;
 * - nothing acknowledged was lost in a way the strategy does not allow: every
 *   step of the server's log either was written by a device that had seen the
 *   version it replaced, or is an override the strategy permits (see
 *   OVERWRITE_RULES in convergence-model.ts), plus each strategy's own
 *   promise about the final state (listed at each test).
 *
 * Seeded and reproducible: FC_SEED=<seed> reruns a failure, FC_NUM_RUNS=<n>
 * runs more cases per strategy, FC_SHRINK=1 shrinks a failure to a minimal
 * one, FC_EXAMPLE=<its JSON> replays it (with `-t <strategy>` for one).
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { createSyncPlugin, type ConflictResolution, type SyncApi } from '../src/client/index.js';
import { MemorySyncStorage } from '../src/server/index.js';
import type { StoredEvent } from '../src/shared/protocol/index.js';
import { OVERWRITE_RULES, Histories, checkLog, choices, eventKey, headsOf, keyOf, laterNumberWins, type HistoryEntry, type OverwriteRule } from './convergence-model.js';
import { contents, openDatabase, sleep, startServer, uniqueName, waitFor, type TestClient, type TestServer, type Todo } from './helpers.js';

const CLIENTS = 3;
const DOC_IDS = ['d0', 'd1', 'd2', 'd3'];
const NUM_RUNS = process.env.FC_NUM_RUNS ? Number(process.env.FC_NUM_RUNS) : undefined;
const SEED = Number(process.env.FC_SEED ?? 20_260_415);
const SHRINK = process.env.FC_SHRINK === '1';
/** FC_EXAMPLE=<a counterexample's JSON as printed>: runs that case first. */
const EXAMPLE = process.env.FC_EXAMPLE ? [[JSON.parse(process.env.FC_EXAMPLE)] as [{ commands: Command[]; choiceSeed: number }]] : [];
/** Runs per strategy: about 0.15 s each, so the file stays well under a minute on a busy machine. */
const DEFAULT_RUNS = 30;

type Command =
  | { kind: 'put'; client: number; doc: string; done: boolean }
  | { kind: 'remove'; client: number; doc: string }
  | { kind: 'bulk'; client: number; docs: string[]; done: boolean }
  | { kind: 'offline'; client: number }
  | { kind: 'online'; client: number }
  | { kind: 'restart'; client: number }
  | { kind: 'write-unlogged'; client: number; doc: string; done: boolean }
  | { kind: 'resolve'; client: number }
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
  // Only `manual` keeps conflicts; elsewhere there is nothing to decide.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('resolve' as const), client }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'drop-ack' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('pause' as const), ms: fc.integer({ min: 1, max: 30 }) }) },
);
const scenario = fc.record({ commands: fc.array(command, { minLength: 5, maxLength: 40 }), choiceSeed: fc.integer() });

type StrategyUnderTest = Exclude<ConflictResolution, (...args: never[]) => unknown> | 'custom';

interface Outcome {
  events: StoredEvent[];
  final: Todo[];
  histories: Histories;
  deviceOf: (clientId: string) => number | undefined;
  /** The last write made to each document, in real time (null: a delete). */
  lastWrite: Map<string, Todo | null>;
}

async function run({ commands, choiceSeed }: { commands: Command[]; choiceSeed: number }, strategy: StrategyUnderTest): Promise<Outcome> {
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
  /** Client id -> device, from the handshakes; a token names the device and its instance (dev2.5: device 2, fifth start). */
  const devices = new Map<string, number>();
  let instances = 0;
  /** What happened, for a failure's message. */
  const trace: string[] = [];
  const t0 = Date.now();
  const note = (line: string) => trace.push(`${Date.now() - t0}ms ${line}`);
  server = await startServer({
    storage,
    authenticate: (socket, token) => {
      devices.set((socket.handshake.auth as { clientId: string }).clientId, Number(String(token).slice(3, 4)));
      note(`server: handshake ${token} socket ${socket.id}`);
      return { id: String(token).slice(0, 4) };
    },
  });
  const url = server.url;
  server.server.events.on('client-connect', (info) => note(`server: connect dev${devices.get(info.clientId)} socket ${info.socketId}`));
  server.server.events.on('client-disconnect', (info) => note(`server: disconnect dev${devices.get(info.clientId)} socket ${info.socketId}: ${info.reason}`));
  server.server.events.on('client-dropped', (info) => note(`server: dropped dev${devices.get(info.clientId)}: ${info.reason}`));
  const histories = new Histories(CLIENTS);
  const names = Array.from({ length: CLIENTS }, () => uniqueName('conv'));
  const offline = new Set<number>();
  const random = choices(choiceSeed);
  let writeCount = 0;
  const lastWrite = new Map<string, Todo | null>();

  const resolverFor = (device: number): ConflictResolution => {
    if (strategy !== 'custom') return strategy;
    return (conflict) => {
      const output = laterNumberWins(conflict);
      histories.add(device, {
        kind: 'resolved',
        doc: conflict.documentId,
        remote: conflict.remote ? keyOf(conflict.remote.data, conflict.remote.deleted) : null,
        output: output ? keyOf(output, false) : keyOf(conflict.local.data, true),
      });
      return output as unknown as Record<string, unknown> | null;
    };
  };
  const start = async (device: number): Promise<TestClient> => {
    const db = await openDatabase(names[device]!);
    // Watched before the plugin starts: every version the plugin writes is seen.
    histories.watch(device, db.todos);
    await histories.snapshot(device, db.todos, DOC_IDS);
    const sync: SyncApi = await db.addPlugin(
      createSyncPlugin({
        serverUrl: url,
        collections: ['todos'],
        authToken: `dev${device}.${instances++}`,
        logging: { enabled: false },
        retry: { maxRetries: 5, retryDelay: 50, useExponentialBackoff: true },
        conflictResolution: resolverFor(device),
        syncInterval: 200,
        batchSize: 2,
      }),
    );
    if (offline.has(device)) sync.disable();
    return { db, todos: db.todos, sync, name: names[device]!, close: () => db.close().then(() => undefined) };
  };
  /** Waits until the clock has moved on: distinct write times, so that "the last write" is well defined. */
  const nextMillisecond = async () => {
    const now = Date.now();
    await waitFor(() => Date.now() > now, 'the clock to move on');
  };
  const own = (device: number, data: Todo, deleted = false) => {
    histories.add(device, { kind: 'own', doc: data.id, key: keyOf(data, deleted) });
    lastWrite.set(data.id, deleted ? null : data);
  };
  /** The app decides every conflict its device keeps, at random; returns how many it decided. */
  const decideConflicts = async (device: number): Promise<number> => {
    const c = clients[device]!;
    let decided = 0;
    for (const conflict of c.sync.getConflicts()) {
      const roll = random();
      const data: Todo | undefined = roll < 1 / 3 ? { id: conflict.documentId, title: `w${writeCount++}-c${device}-decided`, done: random() < 0.5 } : undefined;
      const choice = data ? { data: { ...data } } : roll < 2 / 3 ? 'keep-local' : 'keep-remote';
      try {
        await c.sync.resolveConflict(conflict.id, choice);
      } catch (error) {
        // The document changed meanwhile (a pull replaced the conflict): decided again next time.
        note(`device ${device}: resolveConflict(${conflict.documentId}) failed: ${(error as Error).message}`);
        continue;
      }
      decided++;
      // What the app was shown: the server version its decision overrides.
      histories.add(device, { kind: 'decided', doc: conflict.documentId, remote: conflict.remote ? keyOf(conflict.remote.data, conflict.remote.deleted) : null });
      if (data) own(device, data);
    }
    return decided;
  };

  const clients: TestClient[] = [];
  for (let device = 0; device < CLIENTS; device++) clients.push(await start(device));
  try {
    for (const cmd of commands) {
      note(`cmd ${JSON.stringify(cmd)}`);
      switch (cmd.kind) {
        case 'put': {
          const data: Todo = { id: cmd.doc, title: `w${writeCount++}-c${cmd.client}`, done: cmd.done };
          await clients[cmd.client]!.todos.upsert(data);
          own(cmd.client, data);
          await nextMillisecond();
          break;
        }
        case 'bulk': {
          const docs = cmd.docs.map((id): Todo => ({ id, title: `w${writeCount++}-c${cmd.client}`, done: cmd.done }));
          await clients[cmd.client]!.todos.bulkUpsert(docs);
          for (const data of docs) own(cmd.client, data);
          await nextMillisecond();
          break;
        }
        case 'remove': {
          const existing = await clients[cmd.client]!.todos.findOne(cmd.doc).exec();
          if (existing) {
            const removed = existing.toJSON() as Todo;
            await existing.remove();
            own(cmd.client, removed, true);
            await nextMillisecond();
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
        case 'restart':
          await clients[cmd.client]!.close();
          clients[cmd.client] = await start(cmd.client);
          break;
        case 'write-unlogged': {
          // A write that reached storage while the plugin was not running (a crash between write and log).
          await clients[cmd.client]!.close();
          const bare = await openDatabase(names[cmd.client]!);
          await histories.snapshot(cmd.client, bare.todos, DOC_IDS);
          const data: Todo = { id: cmd.doc, title: `w${writeCount++}-c${cmd.client}-unlogged`, done: cmd.done };
          await bare.todos.upsert(data);
          histories.add(cmd.client, { kind: 'held', doc: data.id, key: keyOf(data, false) });
          own(cmd.client, data);
          await nextMillisecond();
          await bare.close();
          clients[cmd.client] = await start(cmd.client);
          break;
        }
        case 'resolve':
          await decideConflicts(cmd.client);
          break;
        case 'drop-ack':
          dropAck = true;
          break;
        case 'pause':
          await sleep(cmd.ms);
          break;
      }
    }
    note('all online');
    // Everyone online; sync (and, under manual, decide) until idle.
    dropAck = false;
    for (const c of clients) c.sync.enable();
    /** A deadline missed: the devices' status and what happened, to read the failure from. */
    const explain = (error: Error) => {
      const statuses = clients.map((c, device) => `device ${device}: ${JSON.stringify({ ...c.sync.getStatus(), error: c.sync.getStatus().error?.message })}`);
      return new Error(`${error.message}\n${statuses.join('\n')}\n${trace.join('\n')}`);
    };
    await waitFor(async () => {
      for (const c of clients) await c.sync.syncNow().catch(() => undefined);
      let decided = 0;
      for (let device = 0; device < CLIENTS; device++) decided += await decideConflicts(device);
      if (decided > 0) return false;
      if (clients.some((c) => c.sync.getStatus().pendingEvents > 0 || c.sync.getConflicts().length > 0)) return false;
      const truth = JSON.stringify(headsOf(await storage.getEventsAfter(0)));
      for (const c of clients) if (JSON.stringify(await contents(c.todos)) !== truth) return false;
      return true;
    }, 'every client to hold the server state, nothing pending, no conflict kept', 30_000).catch((error: Error) => {
      throw explain(error);
    });
    // And each device knows it: connected, idle, nothing to push.
    const inSync = new Set<number>();
    clients.forEach((c, device) => void c.sync.awaitInSync().then(() => inSync.add(device), () => undefined));
    await waitFor(() => inSync.size === CLIENTS, 'awaitInSync() to resolve on every device', 10_000).catch((error: Error) => {
      throw explain(error);
    });
    const events = await storage.getEventsAfter(0);
    return { events, final: headsOf(events), histories, deviceOf: (id) => devices.get(id), lastWrite };
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await server.stop();
  }
}

/** Checks every step of the server's log against the strategy's rule; returns how many steps only the rule allowed. */
function expectAllowedLog(outcome: Outcome, rule: OverwriteRule, ownOnly: boolean): number {
  const { problems, overrides } = checkLog(outcome.events, outcome.histories, outcome.deviceOf, rule, ownOnly);
  expect(problems).toEqual([]);
  return overrides;
}

/**
 * Each device's last change to each document that the server never stored
 * (lost to a conflict), described. A delete met by a deletion already on the
 * server is the same change on both sides and counts as stored.
 */
function droppedChanges(outcome: Outcome): string[] {
  const stored = new Set(outcome.events.map((event) => `${event.documentId}/${eventKey(event)}`));
  for (const event of outcome.events) if (event.op === 'delete') stored.add(`${event.documentId}/-`);
  const dropped: string[] = [];
  for (let device = 0; device < CLIENTS; device++) {
    for (const id of DOC_IDS) {
      const last = outcome.histories.ownWrites(device, id).at(-1);
      if (last === undefined || stored.has(`${id}/${last}`) || (last.startsWith('-') && stored.has(`${id}/-`))) continue;
      const log = outcome.events.filter((event) => event.documentId === id).map((event) => `${event.seq}:${eventKey(event)}@${outcome.deviceOf(event.clientId)}`);
      dropped.push(`device ${device}'s ${last} on ${id}; server log: ${log.join(' ')}; device ${device}: ${outcome.histories.describe(device, id)}`);
    }
  }
  return dropped;
}

const runs = new Map<string, number>();
/**
 * Runs the strategy's property; `check` returns how many conflicts the run
 * settled the strategy's way. Their sum over all runs must be positive: a
 * property whose runs met no conflict proved nothing about the strategy.
 */
async function property(name: StrategyUnderTest, numRuns: number, check: (outcome: Outcome) => number) {
  const count = NUM_RUNS ?? numRuns;
  let exercised = 0;
  await fc.assert(
    fc.asyncProperty(scenario, async (input) => {
      exercised += check(await run(input, name));
    }),
    { seed: SEED, numRuns: count, endOnFailure: !SHRINK, examples: EXAMPLE },
  );
  runs.set(name, exercised);
  expect(exercised, `conflicts settled by ${name} over ${count} runs`).toBeGreaterThan(0);
}

afterAll(() => {
  // Printed so that any run, failing or not, can be repeated exactly.
  console.log(
    `convergence: seed ${SEED}, ${NUM_RUNS ?? 'default'} runs per strategy (FC_SEED / FC_NUM_RUNS / FC_SHRINK=1 to change); conflicts settled: ${[...runs].map(([name, n]) => `${name} ${n}`).join(', ')}`,
  );
});

describe('randomized convergence, every strategy', () => {
  it('last-write-wins: each document holds its last write in real time; a write overrides an unseen version only with a later clock', async () => {
    await property('last-write-wins', DEFAULT_RUNS, (outcome) => {
      for (const id of DOC_IDS) expect(outcome.final.find((d) => d.id === id) ?? null, `document ${id}`).toEqual(outcome.lastWrite.get(id) ?? null);
      return expectAllowedLog(outcome, OVERWRITE_RULES['last-write-wins'], false);
    });
  }, 120_000);

  it('merge: the title (changed by every write on both sides) is the last write\'s; an unseen version is overridden only by a later clock', async () => {
    await property('merge', DEFAULT_RUNS, (outcome) => {
      // A delete against an update is last-write-wins; only `done` may merge either way.
      for (const id of DOC_IDS) expect(outcome.final.find((d) => d.id === id)?.title ?? null, `document ${id}`).toBe(outcome.lastWrite.get(id)?.title ?? null);
      return expectAllowedLog(outcome, OVERWRITE_RULES.merge, false);
    });
  }, 120_000);

  it('server-wins: a server version is only ever replaced by a device that had seen it, with its app\'s own write', async () => {
    await property('server-wins', DEFAULT_RUNS, (outcome) => {
      expectAllowedLog(outcome, OVERWRITE_RULES['server-wins'], true);
      return droppedChanges(outcome).length;
    });
  }, 120_000);

  it('client-wins: each device\'s last change to each document reached the server, as its app wrote it', async () => {
    await property('client-wins', DEFAULT_RUNS, (outcome) => {
      expect(droppedChanges(outcome), 'last changes of a device that the server never stored').toEqual([]);
      return expectAllowedLog(outcome, OVERWRITE_RULES['client-wins'], true);
    });
  }, 120_000);

  it('manual: once the app has decided every kept conflict (keep-local, keep-remote or new data, at random), all converge; only a decision overrides an unseen version', async () => {
    await property('manual', DEFAULT_RUNS, (outcome) => expectAllowedLog(outcome, OVERWRITE_RULES.manual, true));
  }, 120_000);

  it('custom resolver: all converge; an unseen version is overridden only by what the resolver answered for it', async () => {
    await property('custom', DEFAULT_RUNS, (outcome) => expectAllowedLog(outcome, OVERWRITE_RULES.custom, false));
  }, 120_000);
});

/**
 * The checker itself, on a recorded failure (seed 20260415, when pushes came
 * a queue turn later): device 1's resolver answered its own w6 for the
 * server's w4, its app wrote w9 over w6 before w6 was pushed, and the engine
 * pushed w9 in w6's place, based on w4. That is a write on top of the
 * resolver's answer for w4, not an override of an unseen w4.
 */
describe('the convergence checker', () => {
  const event = (seq: number, title: string, done: boolean, client: string): StoredEvent => ({
    id: `e${seq}`, collection: 'todos', documentId: 'd3', op: 'update', data: { id: 'd3', title, done },
    baseEventId: null, hlc: `${String(seq).padStart(15, '0')}-000000-${client}`, seq, clientId: client, serverTime: seq,
  });
  const log = [event(4, 'w4-c2', true, 'c2'), event(8, 'w9-c1', false, 'c1'), event(10, 'w10-c2', false, 'c2')];
  const held = (key: string): HistoryEntry => ({ kind: 'held', doc: 'd3', key });
  const own = (key: string): HistoryEntry => ({ kind: 'own', doc: 'd3', key });
  const check = (device1: HistoryEntry[]) => {
    const histories = new Histories(3);
    for (const entry of device1) histories.add(1, entry);
    for (const entry of [held('w4-c2|true'), own('w4-c2|true'), held('w9-c1|false'), held('w10-c2|false'), own('w10-c2|false')]) histories.add(2, entry);
    return checkLog(log, histories, (id) => (id === 'c1' ? 1 : 2), OVERWRITE_RULES.custom, false).problems;
  };
  const resolved: HistoryEntry = { kind: 'resolved', doc: 'd3', remote: 'w4-c2|true', output: 'w6-c1|true' };

  it('an app write on the resolver\'s answer for a server version has seen that version', () => {
    expect(check([held('w6-c1|true'), own('w6-c1|true'), resolved, held('w9-c1|false'), own('w9-c1|false'), held('w10-c2|false')])).toEqual([]);
    // The answer written by the plugin after the resolution, then the app's writes over it.
    expect(check([held('w6-c1|false'), own('w6-c1|false'), resolved, held('w6-c1|true'), held('w7-c1|true'), own('w7-c1|true'), held('w9-c1|false'), own('w9-c1|false'), held('w10-c2|false')])).toEqual([]);
  });

  it('but not when the answer never took effect, or something from elsewhere came between', () => {
    // The app wrote before the plugin could write the answer (which it then never did).
    expect(check([held('w6-c1|false'), own('w6-c1|false'), resolved, held('w9-c1|false'), own('w9-c1|false'), held('w10-c2|false')])).toHaveLength(1);
    // Another device's version held after the answer, then the app's write pushed on w4.
    expect(check([held('w6-c1|true'), own('w6-c1|true'), resolved, held('w5-c0|true'), held('w9-c1|false'), own('w9-c1|false'), held('w10-c2|false')])).toHaveLength(1);
    // A resolution against another server version.
    expect(check([held('w6-c1|true'), own('w6-c1|true'), { ...resolved, remote: 'w3-c0|true' }, held('w9-c1|false'), own('w9-c1|false'), held('w10-c2|false')])).toHaveLength(1);
    // No resolution at all: the local write pushed over w4 as it was.
    expect(check([held('w6-c1|true'), own('w6-c1|true'), held('w9-c1|false'), own('w9-c1|false'), held('w10-c2|false')])).toHaveLength(1);
  });
});
