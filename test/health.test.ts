/**
 * The operator's view: health endpoints, Prometheus metrics fed by real
 * traffic, and the command line's answers to bad arguments.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { register as globalRegistry } from 'prom-client';
import { io, type Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { HybridLogicalClock } from '../src/shared/hlc.js';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type PushReply, type SyncEvent, type WelcomeMessage } from '../src/shared/protocol/index.js';
import { MemorySyncStorage, attachHealthAndMetrics, createSyncServer, type HealthReport } from '../src/server/index.js';
import { main } from '../src/cli/program.js';
import { serve } from '../src/cli/serve.js';
import { contents, rawSocket, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';
import { REDIS, createTestDatabase, serviceReady } from './services.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serverWithEndpoints(options: Parameters<typeof startServer>[0] = {}) {
  const server = await startServer(options);
  const endpoints = attachHealthAndMetrics(server.server, server.httpServer);
  cleanups.push(() => server.stop(), async () => endpoints.close());
  return { ...server, endpoints };
}

async function client(server: TestServer): Promise<TestClient> {
  const started = await startClient(server.url);
  cleanups.push(() => started.close());
  return started;
}

async function get(url: string): Promise<{ status: number; type: string | null; body: string }> {
  const response = await fetch(url);
  return { status: response.status, type: response.headers.get('content-type'), body: await response.text() };
}

/** The value of one sample in Prometheus text format (0 when absent). */
function sample(metrics: string, name: string): number {
  const line = metrics.split('\n').find((candidate) => candidate.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

const clock = new HybridLogicalClock('raw-writer');
let eventCount = 0;
function event(documentId: string, baseEventId: string | null = null): SyncEvent {
  return {
    id: `health-${++eventCount}-${Math.random().toString(36).slice(2, 10)}`,
    collection: 'todos',
    documentId,
    op: baseEventId ? 'update' : 'insert',
    data: { id: documentId, title: `title ${eventCount}`, done: false },
    baseEventId,
    hlc: clock.tick(),
  };
}

async function push(socket: Socket, events: SyncEvent[]): Promise<PushReply> {
  const reply = await socket.timeout(5000).emitWithAck(MESSAGE.push, toPushRows(events, 'raw-writer'));
  if (!reply.ok) throw new Error(`push refused: ${JSON.stringify(reply.error)}`);
  return reply;
}

/** A raw socket whose client id is the node of `clock`: its pushes leave the node out, as the plugin's do. */
async function raw(server: TestServer): Promise<Socket> {
  const socket = await rawSocket(server.url, { clientId: 'raw-writer' });
  cleanups.push(async () => socket.close());
  return socket;
}

describe('health endpoints', () => {
  it('report storage, its latency, connected clients and stored events', async () => {
    const server = await serverWithEndpoints();
    const [alice, bob] = [await client(server), await client(server)];
    await alice.todos.bulkInsert([
      { id: 'a', title: 'one', done: false },
      { id: 'b', title: 'two', done: false },
      { id: 'c', title: 'three', done: true },
    ]);
    await waitFor(async () => (await bob.todos.count().exec()) === 3, 'bob to receive the todos');

    const live = await get(`${server.url}/health/live`);
    expect(live).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    expect(live.type).toContain('application/json');
    expect(await get(`${server.url}/health/ready`)).toMatchObject({ status: 200 });

    const health = await get(`${server.url}/health`);
    expect(health.status).toBe(200);
    const report = JSON.parse(health.body) as HealthReport;
    expect(report).toMatchObject({
      status: 'ok',
      storage: { reachable: true, latestSequence: 3, eventsStored: 3 },
      clients: { connected: 2 },
    });
    expect(report.storage.latencyMs).toBeGreaterThanOrEqual(0);
    expect(report.storage.latencyMs).toBeLessThan(1000);
    expect(report.uptimeSeconds).toBeGreaterThanOrEqual(0);

    // The sync endpoint still works beside them, and other paths are not answered here.
    expect((await get(`${server.url}/socket.io/?EIO=4&transport=polling`)).status).toBe(200);
    expect((await fetch(`${server.url}/health`, { method: 'POST' })).status).toBe(405);
  });

  it('answer 503 when storage does not', async () => {
    const storage = new MemorySyncStorage();
    const server = await serverWithEndpoints({ storage });
    storage.getLatestSequence = () => Promise.reject(new Error('disk on fire'));

    const ready = await get(`${server.url}/health/ready`);
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.body)).toEqual({ status: 'unavailable', error: 'disk on fire' });
    const health = await get(`${server.url}/health`);
    expect(health.status).toBe(503);
    expect(JSON.parse(health.body)).toMatchObject({ status: 'unavailable', storage: { reachable: false, error: 'disk on fire' } });
    // Liveness is about the process, not its dependencies.
    expect((await get(`${server.url}/health/live`)).status).toBe(200);
  });

  it('are not ready before the sync server starts', async () => {
    const httpServer = createServer();
    const syncServer = createSyncServer({ httpServer, logging: { enabled: false } });
    const endpoints = attachHealthAndMetrics(syncServer, httpServer, { healthPath: '/status' });
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () => new Promise((resolve) => httpServer.close(resolve)),
      async () => endpoints.close(),
    );
    const url = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
    expect((await get(`${url}/status/ready`)).status).toBe(503);
    await syncServer.start();
    cleanups.unshift(() => syncServer.stop());
    expect((await get(`${url}/status/ready`)).status).toBe(200);
  });
});

describe('metrics', () => {
  it('count what pushes and pulls did, with latency histograms', async () => {
    const server = await serverWithEndpoints({
      authorize: (_user, _collection, operation, document) => operation === 'read' || document.title !== 'forbidden',
    });
    const alice = await client(server);
    await alice.todos.insert({ id: 'x', title: 'from alice', done: false });
    await waitFor(() => alice.sync.getStatus().pendingEvents === 0, 'alice to push');

    const socket = await raw(server);
    const first = event('raw-1');
    const [accepted] = (await push(socket, [first])).results;
    expect(accepted).toBe(2);
    // A retry is answered with the sequence stored first.
    expect((await push(socket, [first])).results).toEqual([2]);
    expect((await push(socket, [event('raw-1', null)])).results[0]).toMatchObject({ status: 'conflict' });
    const forbidden = { ...event('raw-2'), data: { id: 'raw-2', title: 'forbidden', done: false } };
    expect((await push(socket, [forbidden])).results[0]).toMatchObject({ status: 'rejected' });
    await socket.timeout(5000).emitWithAck(MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });

    const { body: metrics, type } = await get(`${server.url}/metrics`);
    expect(type).toContain('text/plain');
    expect(sample(metrics, 'rxdb_offline_sync_connected_clients')).toBe(2);
    // Alice's plugin and the raw socket, each counted by the version it spoke.
    expect(sample(metrics, 'rxdb_offline_sync_client_connections_total{protocol="5"}')).toBe(2);
    // Nothing waited: two clients on an idle server start at once.
    expect(sample(metrics, 'rxdb_offline_sync_admission_total{stage="handshakes",outcome="refused"}')).toBe(0);
    expect(sample(metrics, 'rxdb_offline_sync_admission_total{stage="upgrades",outcome="refused"}')).toBe(0);
    expect(sample(metrics, 'rxdb_offline_sync_push_events_total{result="accepted"}')).toBe(2);
    expect(sample(metrics, 'rxdb_offline_sync_push_events_total{result="duplicate"}')).toBe(1);
    expect(sample(metrics, 'rxdb_offline_sync_push_events_total{result="conflict"}')).toBe(1);
    expect(sample(metrics, 'rxdb_offline_sync_push_events_total{result="rejected"}')).toBe(1);
    expect(sample(metrics, 'rxdb_offline_sync_push_duration_seconds_count')).toBe(5);
    expect(sample(metrics, 'rxdb_offline_sync_push_duration_seconds_bucket{le="+Inf"}')).toBe(5);
    expect(sample(metrics, 'rxdb_offline_sync_pull_duration_seconds_count')).toBeGreaterThanOrEqual(2);
    expect(sample(metrics, 'rxdb_offline_sync_pull_events_total')).toBeGreaterThanOrEqual(2);
    expect(sample(metrics, 'rxdb_offline_sync_storage_errors_total{operation="save"}')).toBe(0);
    expect(metrics).toContain('rxdb_offline_sync_process_cpu_seconds_total');

    await alice.close();
    await waitFor(() => server.server.getClientsCount() === 1, 'alice to disconnect');
    expect(sample((await get(`${server.url}/metrics`)).body, 'rxdb_offline_sync_connected_clients')).toBe(1);
  });

  it('count storage errors', async () => {
    const storage = new MemorySyncStorage();
    const server = await serverWithEndpoints({ storage });
    const socket = await raw(server);
    storage.saveEvents = () => Promise.reject(new Error('disk full'));
    const pushReply = await socket.timeout(5000).emitWithAck(MESSAGE.push, toPushRows([event('e1')], 'raw-writer'));
    expect(pushReply).toMatchObject({ ok: false, error: { code: 'STORAGE_ERROR' } });
    // Every way of reading fails from here on, whichever one a pull uses.
    for (const method of ['getEventsAfter', 'getChangesAfter', 'getHeads'] as const) {
      if (method in storage) Object.assign(storage, { [method]: () => Promise.reject(new Error('disk gone')) });
    }
    const pullReply = await socket.timeout(5000).emitWithAck(MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });
    expect(pullReply).toMatchObject({ ok: false, error: { code: 'STORAGE_ERROR' } });

    const { body: metrics } = await get(`${server.url}/metrics`);
    expect(sample(metrics, 'rxdb_offline_sync_storage_errors_total{operation="save"}')).toBe(1);
    expect(sample(metrics, 'rxdb_offline_sync_storage_errors_total{operation="read"}')).toBe(1);
  });

  it('live in a registry of their own, one per server', async () => {
    const one = await serverWithEndpoints();
    const two = await serverWithEndpoints();
    await push(await raw(one), [event('only-on-one')]);
    const accepted = 'rxdb_offline_sync_push_events_total{result="accepted"}';
    expect(sample((await get(`${one.url}/metrics`)).body, accepted)).toBe(1);
    expect(sample((await get(`${two.url}/metrics`)).body, accepted)).toBe(0);
    expect(await globalRegistry.metrics()).not.toContain('rxdb_offline_sync_');
  });
});

/** Runs the CLI as a user would; resolves with its exit code and output. */
function runCli(args: string[], timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`CLI did not exit within ${timeoutMs} ms: ${stdout}${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The CLI in this process, its output captured: quick, and the same code path as the binary. */
async function runCliInProcess(args: string[]): Promise<{ code: number | undefined; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'rxdb-offline-sync', ...args], {
    stdout: (text) => (stdout += text),
    stderr: (text) => (stderr += text),
    onStarted: () => {
      throw new Error('the server should not have started');
    },
  });
  return { code, stdout, stderr };
}

describe('command line', () => {
  it('refuses a bad port with a clear message and exit code 2 (a real process)', async () => {
    const { code, stderr, stdout } = await runCli(['serve', '--port', 'abc']);
    expect(stderr).toContain(`error: option '-p, --port <port>' argument 'abc' is invalid. expected a port number from 0 to 65535, got "abc".`);
    expect(stdout).toBe('');
    expect(code).toBe(2);
  });

  it.each([
    [['serve', '--port', '70000'], /from 0 to 65535/],
    [['serve', '--port', '-1'], /got "-1"/],
    [['serve', '--storage', 'mysql://db'], /expected memory, sqlite:PATH or postgres:\/\/\.\.\., got "mysql:\/\/db"/],
    [['serve', '--storage', 'sqlite:'], /expected a file after "sqlite:"/],
    [['serve', '--redis', 'http://localhost:6379'], /redis:\/\/ or rediss:\/\//],
    [['serve', '--cors-origin', 'localhost:5173'], /expected "\*" or origins such as http:\/\/localhost:5173/],
    [['serve', '--log-level', 'loud'], /Allowed choices are fatal, error, warn, info, debug, trace, silent/],
    [['serve', '--static', 'no/such/dir'], /--static no\/such\/dir: no index\.html/],
    [['serve', '--bogus'], /unknown option '--bogus'/],
    [['serve', '--max-attachment-bytes', '0'], /expected a whole number of bytes, at least 1, optionally with a unit \(KB, MB, GB, KiB, MiB, GiB\), such as 50MiB, 200MB or 1048576, got "0"/],
    [['serve', '--attachment-quota', '5 parsecs'], /got "5 parsecs"/],
    [['serve', '--attachment-quota', '1.5MiB'], /a whole number of bytes.*got "1\.5MiB"/],
    [['launch'], /unknown command 'launch'/],
    [[], /Usage: rxdb-offline-sync/],
  ])('refuses %j with a clear message and exit code 2', async (args, message) => {
    const { code, stderr, stdout } = await runCliInProcess(args);
    expect(stderr).toMatch(message);
    expect(stdout).toBe('');
    expect(code).toBe(2);
  });

  it('prints its help and exits 0', async () => {
    const { code, stdout } = await runCliInProcess(['serve', '--help']);
    expect(code).toBe(0);
    for (const flag of ['--port', '--storage', '--redis', '--log-level', '--static']) expect(stdout).toContain(flag);
  });

  it('holds attachments to --max-attachment-bytes and each user to --attachment-quota', async () => {
    let running: Awaited<ReturnType<typeof serve>> | undefined;
    const code = await main(
      ['node', 'rxdb-offline-sync', 'serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'memory', '--log-level', 'silent', '--max-attachment-bytes', '4KiB', '--attachment-quota', '3KiB'],
      { stdout: () => undefined, stderr: () => undefined, onStarted: (server) => (running = server) },
    );
    expect(code).toBeUndefined();
    const socket = io(running!.url, { transports: ['websocket'], reconnection: false, autoConnect: false, auth: { protocolVersion: PROTOCOL_VERSION, clientId: 'cli-attachments' } });
    try {
      const welcome = new Promise<WelcomeMessage>((resolve, reject) => {
        socket.once(MESSAGE.welcome, resolve);
        socket.once('connect_error', reject);
      });
      socket.connect();
      expect((await welcome).limits.maxAttachmentBytes).toBe(4096);
      // Within the size limit, over the quota: refused before anything is stored.
      const bytes = randomBytes(3500);
      const digest = createHash('sha256').update(bytes).digest('hex');
      const reply = (await socket.emitWithAck(MESSAGE.blobUpload, { digest, length: bytes.length, offset: 0, bytes })) as { ok: boolean; error?: { code: string; details?: unknown } };
      expect(reply.ok).toBe(false);
      expect(reply.error).toMatchObject({ code: 'ATTACHMENT_TOO_LARGE', details: { quota: true, limit: 3072 } });
      expect(await running!.syncServer!.getBlobStore()!.stored([digest])).toEqual(new Map());
    } finally {
      socket.close();
      await running?.close();
    }
  });

  it('serves, prints its URL, answers health and stops cleanly on SIGTERM', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'memory', '--log-level', 'warn'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    await waitFor(() => /listening on http:\/\/127\.0\.0\.1:\d+/.test(stdout), 'the CLI to print its URL', 20_000);
    const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout)![1]!;
    expect(stdout).toContain('storage: memory');
    const health = await get(`${url}/health`);
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toMatchObject({ status: 'ok', storage: { reachable: true } });
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('serve --static', () => {
  it('serves the app, falls back to index.html for app routes, and never leaves its folder', async () => {
    const root = mkdtempSync(join(tmpdir(), 'static-'));
    cleanups.push(async () => rmSync(root, { recursive: true, force: true }));
    mkdirSync(join(root, 'app', 'assets'), { recursive: true });
    writeFileSync(join(root, 'app', 'index.html'), '<!doctype html><title>app</title>');
    writeFileSync(join(root, 'app', 'assets', 'main-abc123.js'), 'console.log(1)');
    writeFileSync(join(root, 'secret.txt'), 'outside');
    const running = await serve({ port: 0, host: '127.0.0.1', storage: { kind: 'memory' }, logLevel: 'silent', staticDir: join(root, 'app') });
    cleanups.push(() => running.close());

    const index = await get(`${running.url}/`);
    expect(index).toMatchObject({ status: 200, body: '<!doctype html><title>app</title>' });
    expect(index.type).toContain('text/html');
    expect((await get(`${running.url}/lists/42`)).body).toContain('<title>app</title>');
    const asset = await fetch(`${running.url}/assets/main-abc123.js`);
    expect(asset.headers.get('content-type')).toContain('text/javascript');
    expect(asset.headers.get('cache-control')).toContain('immutable');
    expect((await get(`${running.url}/assets/missing.js`)).status).toBe(404);
    for (const path of ['/../secret.txt', '/%2e%2e/secret.txt', '/assets/..%2f..%2fsecret.txt']) {
      const response = await get(`${running.url}${path}`);
      expect(response.body).not.toContain('outside');
    }
    // Health and sync still answer on the same port.
    expect((await get(`${running.url}/health/ready`)).status).toBe(200);
    expect((await get(`${running.url}/socket.io/?EIO=4&transport=polling`)).status).toBe(200);
  });
});

const scaleOutReady = (await serviceReady('postgres')) && (await serviceReady('redis'));

describe.skipIf(!scaleOutReady)('serve with PostgreSQL and Redis', () => {
  it('two instances share one database and fan live events out through Redis', async () => {
    const database = await createTestDatabase();
    cleanups.push(() => database.drop());
    const options = { port: 0, host: '127.0.0.1', storage: { kind: 'postgres', connectionString: database.connectionString }, redis: REDIS.url, logLevel: 'silent' } as const;
    const one = await serve(options);
    cleanups.push(() => one.close());
    const two = await serve(options);
    cleanups.push(() => two.close());

    // A long sync interval: only a live event through Redis can bring the write over in time.
    const alice = await startClient(one.url, { syncInterval: 600_000 });
    const bob = await startClient(two.url, { syncInterval: 600_000 });
    cleanups.push(() => alice.close(), () => bob.close());
    await waitFor(() => alice.sync.getStatus().connected && bob.sync.getStatus().connected, 'both clients to connect');
    await alice.sync.syncNow();
    await bob.sync.syncNow();

    await alice.todos.insert({ id: 'shared', title: 'through Redis', done: false });
    await waitFor(async () => (await bob.todos.count().exec()) === 1, 'bob, on the other instance, to receive the write live', 5000);
    expect(await contents(bob.todos)).toEqual(await contents(alice.todos));

    const health = JSON.parse((await get(`${two.url}/health`)).body) as HealthReport;
    expect(health).toMatchObject({ status: 'ok', storage: { reachable: true, eventsStored: 1 }, clients: { connected: 1 } });
  });
});
