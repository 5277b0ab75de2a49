/**
 * `serve --workers N`: several server processes behind one port on one
 * SQLite file. Clients on different workers see each other's writes live
 * (socket.io's cluster adapter over the primary), a long-polling client's
 * session stays on its worker, /metrics sums every worker, and a worker that
 * is killed is replaced while its clients move to the others and lose nothing.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import cluster from 'node:cluster';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { keepPrimaryUp } from '../src/cli/cluster.js';
import { contents, startClient, waitFor, type TestClient } from './helpers.js';

const root = join(import.meta.dirname, '..');
const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Cluster {
  child: ChildProcess;
  url: string;
  exited: Promise<number | null>;
  output: () => string;
}

async function startCluster(args: string[]): Promise<Cluster> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--host', '127.0.0.1', '--log-level', 'warn', ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  cleanups.push(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  });
  await waitFor(() => /listening on http:\/\/127\.0\.0\.1:\d+/.test(output) || child.exitCode !== null, 'the CLI to print its URL', 30_000);
  const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1];
  if (!url) throw new Error(`the cluster did not start:\n${output}`);
  return { child, url, exited, output: () => output };
}

/** The worker processes of a primary, by pid (its other children, such as tsx's esbuild, left out). */
function workersOf(primary: number): number[] {
  const ps = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(primary)], { encoding: 'utf8' });
  return ps.stdout
    .split('\n')
    .filter((line) => line.includes('src/cli.ts'))
    .map((line) => Number(line.trim().split(' ')[0]));
}

function metric(text: string, name: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`rxdb_offline_sync_${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

/** waitFor, failing with what the cluster printed: a primary's crash or a worker's error is the cause to see. */
async function waitOn(cluster: Cluster, condition: () => boolean | Promise<boolean>, message: string, timeout: number): Promise<void> {
  try {
    await waitFor(condition, message, timeout);
  } catch (error) {
    const state = `primary ${cluster.child.exitCode ?? cluster.child.signalCode ?? 'running'}, workers ${JSON.stringify(workersOf(cluster.child.pid!))}`;
    throw new Error(`${(error as Error).message} (${state}); the cluster printed:\n${cluster.output()}`);
  }
}

async function client(url: string, options: Parameters<typeof startClient>[1] = {}): Promise<TestClient> {
  const started = await startClient(url, options);
  cleanups.push(() => started.close());
  return started;
}

describe('serve --workers', () => {
  it('keeps the primary up when a message goes to a worker that died and is not yet reported gone', async () => {
    cluster.setupPrimary({ exec: join(import.meta.dirname, 'fixtures', 'idle-worker.cjs') });
    const worker = cluster.fork();
    cleanups.push(() => void worker.process.kill('SIGKILL'));
    const warnings: unknown[] = [];
    keepPrimaryUp(worker, { warn: (fields) => void warnings.push(fields) });
    await new Promise((resolve) => worker.once('online', resolve));
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    // Between the channel's close and the exit, the worker is still listed: sticky sends it a relayed
    // request's abort then, with no callback. Unhandled, that failure is an 'error' that ends the process.
    const sent = new Promise<boolean>((resolve) =>
      worker.process.once('disconnect', () => {
        const listed = cluster.workers?.[worker.id];
        listed?.send({ type: 'sticky:abort', connectionId: 'x' });
        resolve(listed !== undefined);
      }),
    );
    worker.process.kill('SIGKILL');
    expect(await sent).toBe(true);
    await exited;
    await waitFor(() => warnings.length === 1, 'the undelivered message to be logged', 10_000);
  });

  it('runs the workers behind one port: live across workers, long polling, summed metrics, a killed worker replaced', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'workers-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const cluster = await startCluster(['--workers', '2', '--storage', `sqlite:${join(dir, 'sync.db')}`]);
    expect(cluster.output()).toContain('workers: 2 processes');
    const workers = workersOf(cluster.child.pid!);
    expect(workers).toHaveLength(2);

    // Least connections: the two live clients land on different workers, so only the adapter can carry a write across.
    const alice = await client(cluster.url, { syncInterval: 600_000 });
    await waitFor(() => alice.sync.getStatus().connected, 'alice to connect', 20_000);
    const bob = await client(cluster.url, { syncInterval: 600_000 });
    await waitFor(() => bob.sync.getStatus().connected, 'bob to connect', 20_000);
    // Long polling: every request of the session must reach the worker that holds it.
    const carol = await client(cluster.url, { useWebSockets: false, syncInterval: 200 });

    await alice.todos.insert({ id: 'a1', title: 'from alice', done: false });
    await waitFor(async () => (await bob.todos.count().exec()) === 1, 'bob to receive alice\'s write live', 15_000);
    await bob.todos.insert({ id: 'b1', title: 'from bob', done: false });
    await waitFor(async () => (await alice.todos.count().exec()) === 2, 'alice to receive bob\'s write live', 15_000);
    await waitFor(async () => (await carol.todos.count().exec()) === 2, 'the polling client to pull both', 15_000);

    const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
    // Summed over both workers: the two live clients and the polling client's session.
    expect(metric(metrics, 'connected_clients')).toBe(3);

    // A worker killed outright: its clients reconnect to the other, the primary starts a replacement, nothing is lost.
    process.kill(workers[0]!, 'SIGKILL');
    await waitOn(cluster, () => workersOf(cluster.child.pid!).filter((pid) => !workers.includes(pid)).length === 1, 'a replacement worker', 20_000);
    await alice.todos.insert({ id: 'a2', title: 'after the kill', done: false });
    await bob.todos.insert({ id: 'b2', title: 'after the kill', done: false });
    for (const each of [alice, bob, carol]) {
      await waitFor(async () => (await each.todos.count().exec()) === 4 && each.sync.getStatus().pendingEvents === 0, `${each.name} to hold all four`, 20_000);
    }
    expect(await contents(bob.todos)).toEqual(await contents(alice.todos));
    expect(await contents(carol.todos)).toEqual(await contents(alice.todos));

    cluster.child.kill('SIGTERM');
    expect(await cluster.exited).toBe(0);
    expect(workersOf(cluster.child.pid!)).toEqual([]);
  }, 240_000);

  it('serves a client that connects while a replacement worker starts, on its first attempt', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'workers-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const cluster = await startCluster(['--workers', '2', '--storage', `sqlite:${join(dir, 'sync.db')}`]);
    const workers = workersOf(cluster.child.pid!);
    // One client on each worker, so that the worker left after the kill has one at least.
    for (const name of ['alice', 'bob']) {
      const each = await client(cluster.url, { syncInterval: 600_000 });
      await waitFor(() => each.sync.getStatus().connected, `${name} to connect`, 20_000);
    }
    process.kill(workers[0]!, 'SIGKILL');
    await waitOn(cluster, () => workersOf(cluster.child.pid!).filter((pid) => !workers.includes(pid)).length === 1, 'a replacement worker', 20_000);
    // The replacement has no clients yet and is still loading: sticky's least-connection would pick it, and the
    // connection would be lost until the client's connect timeout (10 s). And the primary, busy forking it, was
    // slow to let go of the sockets it handed over: reading on, it dropped the client's first frame (socket.io's
    // CONNECT), and the client never connected. The worker that serves takes the connection, all of it, at once.
    const dave = await client(cluster.url, { syncInterval: 600_000 });
    const errors: string[] = [];
    const watch = dave.sync.status$.subscribe(({ connected, error }) => {
      if (!connected && error) errors.push(error.message);
    });
    cleanups.push(() => watch.unsubscribe());
    await waitFor(() => dave.sync.getStatus().connected, 'a client to connect while the replacement starts', 20_000);
    expect(errors).toEqual([]);
  }, 120_000);

  it('tries again a replacement worker that cannot start yet, until it can', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'workers-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const data = join(dir, 'data');
    mkdirSync(data);
    const cluster = await startCluster(['--workers', '2', '--storage', `sqlite:${join(data, 'sync.db')}`]);
    const workers = workersOf(cluster.child.pid!);
    // The database's folder is away (a volume being remounted, say), a file in its place: a new worker cannot
    // open it (nor make the folder). The running one holds its files open.
    renameSync(data, join(dir, 'away'));
    writeFileSync(data, 'not a folder');
    process.kill(workers[0]!, 'SIGKILL');
    await waitFor(() => cluster.output().includes('a replacement worker exited while starting'), 'a replacement to fail to start', 30_000);
    rmSync(data);
    renameSync(join(dir, 'away'), data);
    // Tried again: the cluster is two workers again, and serves.
    await waitFor(() => workersOf(cluster.child.pid!).length === 2 && /worker \d+ ready|listening/.test(cluster.output()), 'two workers again', 30_000);
    const erin = await client(cluster.url, { syncInterval: 600_000 });
    await erin.todos.insert({ id: 'e1', title: 'after the remount', done: false });
    await waitFor(() => erin.sync.getStatus().connected && erin.sync.getStatus().pendingEvents === 0, 'a write to be stored', 30_000);
    expect(cluster.child.exitCode).toBeNull();
  }, 120_000);

  it('refuses memory storage, which workers cannot share', async () => {
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--workers', '2', '--storage', 'memory'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
    expect(run.stderr).toContain('--workers needs storage the workers share');
    expect(run.status).toBe(2);
  });
});
