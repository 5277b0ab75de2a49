/**
 * Invariant 1 under the harshest stop: the server process is SIGKILLed in the
 * middle of a stream of pushes, on SQLite and on PostgreSQL. Everything the
 * client saw acknowledged is in storage right after the kill; once the server
 * is back on the same port, the client reconnects by itself and finishes, and
 * the server holds every document the client wrote exactly once.
 *
 * Two kills per storage: from outside (the test sends SIGKILL the moment the
 * server reports 100 committed events, racing its reply), and from inside
 * (the server kills itself after committing a batch, before replying, so the
 * client must retry events the server already holds).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PostgresSyncStorage, SqliteSyncStorage, type SyncStorage } from '../src/server/storage/index.js';
import { MESSAGE, type PushReply, type StoredEvent } from '../src/shared/protocol/index.js';
import { contents, eventsOnWire, sleep, startClient, waitFor, type TestClient, type Todo } from './helpers.js';
import { createTestDatabase, serviceReady } from './services.js';

const SERVER_SCRIPT = fileURLToPath(new URL('./fixtures/server-process.ts', import.meta.url));
const TOTAL_WRITES = 300;
const BURST = 10;
/** The kill comes the moment storage has committed this many writes, well before the stream ends. */
const KILL_AFTER_SAVED = 100;

/** outside: the test kills the server; between-commit-and-reply: the server kills itself there. */
type KillMode = 'outside' | 'between-commit-and-reply';

interface ServerProcess {
  port: number;
  url: string;
  child: ChildProcess;
  /** Event ids storage reported committed (a superset of those acknowledged). */
  saved: Set<string>;
  exited: Promise<void>;
}

const running = new Set<ServerProcess>();

/**
 * Starts test/fixtures/server-process.ts and resolves once it listens.
 * `kill`: SIGKILL it once it has committed KILL_AFTER_SAVED events, from here or from inside.
 */
function spawnServer(port: number, storageArgs: [string, string], kill?: KillMode): Promise<ServerProcess> {
  const killAfterSaved = kill === 'outside' ? KILL_AFTER_SAVED : Infinity;
  const child = spawn(process.execPath, ['--import', 'tsx', SERVER_SCRIPT, String(port), ...storageArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(kill === 'between-commit-and-reply' ? { SIGKILL_AFTER_SAVED: String(KILL_AFTER_SAVED) } : {}) },
  });
  // 'close', not 'exit': every line the process wrote has been read by then.
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const saved = new Set<string>();
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server process not ready within 15 s: ${stderr}`)), 15_000);
    void exited.then(() => reject(new Error(`server process exited before it was ready: ${stderr}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const [word, ...rest] = line.split(' ');
      if (word === 'saved') {
        rest.forEach((id) => saved.add(id));
        if (saved.size >= killAfterSaved) child.kill('SIGKILL');
      }
      if (word === 'ready') {
        clearTimeout(timer);
        const actual = Number(rest[0]);
        const server = { port: actual, url: `http://127.0.0.1:${actual}`, child, saved, exited };
        running.add(server);
        void exited.then(() => running.delete(server));
        resolve(server);
      }
    });
  });
}

async function stopServer(server: ServerProcess, signal: NodeJS.Signals): Promise<void> {
  if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill(signal);
  await server.exited;
}

/**
 * What the client saw acknowledged: the push replies its transport received,
 * observed on socket.io-client's emitWithAck (the client keeps no public list of them).
 */
const acknowledged = new Map<string, string>(); // event id -> document id
/** The sequence each acknowledged event was answered with (for a retry of a stored event: the one it was stored at). */
const answeredSeq = new Map<string, number>();
const originalEmitWithAck = Socket.prototype.emitWithAck;
beforeAll(() => {
  Socket.prototype.emitWithAck = async function (this: Socket, event: string, ...args: unknown[]) {
    const reply = await originalEmitWithAck.call(this, event, ...args);
    if (event === MESSAGE.push && (reply as { ok?: boolean })?.ok) {
      const events = eventsOnWire(args[0]);
      (reply as PushReply).results.forEach((result, i) => {
        if (typeof result !== 'number') return;
        acknowledged.set(events[i]!.id, events[i]!.documentId);
        answeredSeq.set(events[i]!.id, result);
      });
    }
    return reply;
  } as typeof Socket.prototype.emitWithAck;
});
afterAll(() => {
  Socket.prototype.emitWithAck = originalEmitWithAck;
});

const clients: TestClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close().catch(() => undefined)));
  await Promise.all([...running].map((server) => stopServer(server, 'SIGTERM')));
  acknowledged.clear();
  answeredSeq.clear();
});

/** Reads the storage directly, while no server process has it open. */
async function readStorage(open: () => SyncStorage): Promise<StoredEvent[]> {
  const storage = open();
  try {
    await storage.init();
    return await storage.getEventsAfter(0);
  } finally {
    await storage.close();
  }
}

async function killMidStream(kill: KillMode, storageArgs: [string, string], open: () => SyncStorage): Promise<void> {
  const first = await spawnServer(0, storageArgs, kill);
  const client = await startClient(first.url, { autoSync: true });
  clients.push(client);
  await waitFor(() => client.sync.getStatus().connected, 'the client to connect');

  const written: string[] = [];
  const writing = (async () => {
    for (let burst = 0; written.length < TOTAL_WRITES; burst++) {
      const ids = Array.from({ length: BURST }, (_, i) => `doc-${String(burst * BURST + i).padStart(4, '0')}`);
      written.push(...ids);
      await Promise.all(ids.map((id) => client.todos.insert({ id, title: `write ${id}`, done: false })));
      await sleep(10);
    }
  })();

  await waitFor(() => first.child.signalCode !== null || first.child.exitCode !== null, `${KILL_AFTER_SAVED} committed writes and the kill`, 15_000);
  await first.exited;
  expect(first.child.signalCode).toBe('SIGKILL');
  const ackedBeforeKill = new Map(acknowledged);
  const writtenBeforeKill = written.length;
  const savedBeforeKill = [...first.saved];

  // Right after the kill, before anyone could push again: every acknowledged event is stored.
  const afterKill = new Set((await readStorage(open)).map((event) => event.id));
  expect([...ackedBeforeKill.keys()].filter((id) => !afterKill.has(id))).toEqual([]);
  expect(savedBeforeKill.filter((id) => !afterKill.has(id))).toEqual([]);

  const second = await spawnServer(first.port, storageArgs);
  await writing;
  await waitFor(
    () => client.sync.getStatus().connected && client.sync.getStatus().pendingEvents === 0 && acknowledged.size >= TOTAL_WRITES,
    'the client to reconnect by itself and push the rest',
    20_000,
  );
  const clientDocs = await contents(client.todos);
  await stopServer(second, 'SIGTERM');

  // The kill really fell in the middle: some writes acknowledged, more written after it.
  expect(ackedBeforeKill.size).toBeGreaterThan(0);
  expect(savedBeforeKill.length).toBeGreaterThanOrEqual(KILL_AFTER_SAVED);
  expect(writtenBeforeKill).toBeLessThan(TOTAL_WRITES);
  if (kill === 'between-commit-and-reply') {
    // The last batch was stored but never acknowledged: the client pushed it again and was answered
    // with the sequences stored before the kill (an event stored anew would have a later one).
    const unacknowledged = savedBeforeKill.filter((id) => !ackedBeforeKill.has(id));
    expect(unacknowledged.length).toBeGreaterThan(0);
    const storedSeq = new Map((await readStorage(open)).map((event) => [event.id, event.seq]));
    expect(unacknowledged.map((id) => answeredSeq.get(id))).toEqual(unacknowledged.map((id) => storedSeq.get(id)));
  }

  const events = await readStorage(open);
  const insertsPerDocument = new Map<string, number>();
  for (const event of events) {
    expect(event.op).toBe('insert');
    insertsPerDocument.set(event.documentId, (insertsPerDocument.get(event.documentId) ?? 0) + 1);
  }
  expect([...insertsPerDocument.keys()].sort()).toEqual([...written].sort());
  expect([...insertsPerDocument.values()].every((count) => count === 1)).toBe(true);
  expect(events).toHaveLength(TOTAL_WRITES);
  const stored = new Set(events.map((event) => event.id));
  expect([...ackedBeforeKill.keys()].filter((id) => !stored.has(id))).toEqual([]);

  const serverDocs = events.map((event) => event.data as unknown as Todo).sort((a, b) => a.id.localeCompare(b.id));
  expect(clientDocs).toEqual(serverDocs);
}

const KILL_MODES: KillMode[] = ['outside', 'between-commit-and-reply'];

describe('SIGKILL in the middle of a stream of pushes (SQLite)', () => {
  it.each(KILL_MODES)('killed %s: every acknowledged event survives, and the client finishes without duplicates', async (kill) => {
    const dir = mkdtempSync(join(tmpdir(), 'rxos-crash-'));
    const path = join(dir, 'sync.db');
    try {
      await killMidStream(kill, ['sqlite', path], () => new SqliteSyncStorage({ path }));
    } finally {
      await Promise.all([...running].map((server) => stopServer(server, 'SIGTERM')));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!(await serviceReady('postgres')))('SIGKILL in the middle of a stream of pushes (PostgreSQL)', () => {
  it.each(KILL_MODES)('killed %s: every acknowledged event survives, and the client finishes without duplicates', async (kill) => {
    const database = await createTestDatabase();
    try {
      const { connectionString } = database;
      await killMidStream(kill, ['postgres', connectionString], () => new PostgresSyncStorage({ connectionString, poolSize: 2 }));
    } finally {
      await Promise.all([...running].map((server) => stopServer(server, 'SIGTERM')));
      await database.drop();
    }
  });
});
