/**
 * `rxdb-offline-sync serve` fails at start, with exit code 1 and one line
 * naming what it could not reach, when its database or Redis is unreachable;
 * once started, a Redis outage is survived and logged once, not per retry.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { Server as SocketIoServer } from 'socket.io';
import { afterEach, describe, expect, it } from 'vitest';
import { connectRedis } from '../src/cli/serve.js';
import { waitFor } from './helpers.js';
import { portOpen } from './services.js';

const root = join(import.meta.dirname, '..');

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Cli {
  child: ChildProcess;
  exited: Promise<number | null>;
  stdout: () => string;
  stderr: () => string;
}

/** Starts the CLI as a user would (through tsx, as `npx tsx src/cli.ts`). */
function startCli(args: string[]): Cli {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, exited, stdout: () => stdout, stderr: () => stderr };
}

/** The exit code, or a failure naming what the CLI printed if it is still running after `timeoutMs`. */
async function exitCode(cli: Cli, timeoutMs: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms:\n${cli.stdout()}${cli.stderr()}`)), timeoutMs);
  });
  try {
    return await Promise.race([cli.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

function listen(server: Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
  });
}

async function freePort(): Promise<number> {
  const probe = createServer();
  const port = await listen(probe);
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/**
 * A TCP listener on `port` that accepts connections and never says a word
 * (or, with `hangUp`, closes each at once), counting them; closes with the test.
 */
async function standIn(port = 0, hangUp = false): Promise<{ port: number; connections: () => number; close: () => Promise<unknown> }> {
  const sockets = new Set<Socket>();
  let count = 0;
  const server = createServer((socket) => {
    count += 1;
    socket.on('error', () => {}); // the client's reset is expected
    if (hangUp) socket.destroy();
    else sockets.add(socket);
  });
  const bound = await listen(server, port);
  let closed: Promise<unknown> | undefined;
  const close = () =>
    (closed ??= new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(resolve);
    }));
  cleanups.push(close);
  return { port: bound, connections: () => count, close };
}

describe('serve fails fast when a service is unreachable at start', () => {
  it('exits 1 with one line naming Redis and its address (--redis redis://127.0.0.1:1)', async () => {
    const cli = startCli(['serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'memory', '--redis', 'redis://127.0.0.1:1']);
    expect(await exitCode(cli, 20_000)).toBe(1);
    expect(cli.stderr()).toBe('error: cannot connect to Redis at 127.0.0.1:1: connect ECONNREFUSED 127.0.0.1:1\n');
    expect(cli.stdout()).not.toContain('listening');
  }, 30_000);

  it('exits 1 with one line naming PostgreSQL and its address (--storage postgres://postgres@127.0.0.1:1/x)', async () => {
    const cli = startCli(['serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'postgres://postgres@127.0.0.1:1/x']);
    expect(await exitCode(cli, 20_000)).toBe(1);
    expect(cli.stderr()).toMatch(/^error: cannot open storage PostgreSQL postgres:\/\/postgres@127\.0\.0\.1:1\/x: .*ECONNREFUSED 127\.0\.0\.1:1\n$/);
    expect(cli.stdout()).not.toContain('listening');
  }, 30_000);

  it('hides the PostgreSQL password in that line', async () => {
    const cli = startCli(['serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'postgres://postgres:s3cret@127.0.0.1:1/x']);
    expect(await exitCode(cli, 20_000)).toBe(1);
    expect(cli.stderr()).toContain('postgres://postgres:***@127.0.0.1:1/x');
    expect(cli.stderr()).not.toContain('s3cret');
  }, 30_000);

  it('exits 1 when Redis accepts the connection but never answers', async () => {
    const silent = await standIn();
    const cli = startCli(['serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'memory', '--redis', `redis://127.0.0.1:${silent.port}`]);
    expect(await exitCode(cli, 25_000)).toBe(1);
    expect(cli.stderr()).toBe(`error: cannot connect to Redis at 127.0.0.1:${silent.port}: no answer within 10 s\n`);
  }, 35_000);

  it('exits 1 when PostgreSQL accepts the connection but never answers', async () => {
    const silent = await standIn();
    const cli = startCli(['serve', '--port', '0', '--host', '127.0.0.1', '--storage', `postgres://postgres@127.0.0.1:${silent.port}/x`]);
    expect(await exitCode(cli, 40_000)).toBe(1);
    expect(cli.stderr()).toMatch(new RegExp(`^error: cannot open storage .*127\\.0\\.0\\.1:${silent.port}.*timeout.*\\n$`, 'i'));
  }, 60_000);
});

const redisServerInstalled = spawnSync('redis-server', ['--version']).status === 0;

describe.skipIf(!redisServerInstalled)('serve when Redis goes away after start', () => {
  /** A Redis server of this test's own, which it can stop and start again on the same port. */
  async function startRedis(port: number, ...flags: string[]): Promise<ChildProcess> {
    const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...flags], { stdio: 'ignore' });
    const exited = new Promise((resolve) => redis.once('exit', resolve));
    cleanups.push(async () => {
      if (redis.exitCode === null && redis.signalCode === null) redis.kill('SIGKILL');
      await exited;
    });
    await waitFor(() => portOpen('127.0.0.1', port), 'redis-server to listen', 10_000);
    return redis;
  }

  it('survives Redis dying while the adapter\'s subscribes and publishes await their answer', async () => {
    const redisPort = await freePort();
    const redis = await startRedis(redisPort);
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
    const connection = await connectRedis(`redis://127.0.0.1:${redisPort}`, logger);
    cleanups.push(() => connection.close());
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    cleanups.push(() => void process.off('unhandledRejection', onUnhandled));

    // Redis holds every other client's commands until it dies, so the adapter's
    // SUBSCRIBE, PSUBSCRIBE and PUBLISH are all in flight when it does.
    const pause = await new Promise<Socket>((resolve, reject) => {
      const socket = connect(redisPort, '127.0.0.1', () => socket.write('CLIENT PAUSE 60000 ALL\r\n'));
      socket.once('data', (reply) => (reply.toString() === '+OK\r\n' ? resolve(socket) : reject(new Error(reply.toString()))));
      socket.once('error', reject);
    });
    pause.on('error', () => {});
    cleanups.push(() => void pause.destroy());
    const io = new SocketIoServer(createHttpServer(), { adapter: connection.adapter });
    cleanups.push(() => void io.close());
    io.emit('event', 'published while Redis is paused');

    redis.kill('SIGKILL');
    const roles = () => lines.filter((line) => line.includes('redis unreachable')).map((line) => (JSON.parse(line) as { role: string }).role);
    await waitFor(() => roles().length === 2, 'both clients to log the outage', 30_000);
    await new Promise((resolve) => setImmediate(resolve)); // rejections are reported once their microtasks have run
    expect(roles().sort()).toEqual(['publisher', 'subscriber']);
    expect(unhandled).toEqual([]);
  }, 60_000);

  it('keeps serving, logs the outage once per connection and its end once, and stops cleanly', async () => {
    const redisPort = await freePort();
    const redis = await startRedis(redisPort);
    const cli = startCli(['serve', '--port', '0', '--host', '127.0.0.1', '--storage', 'memory', '--redis', `redis://127.0.0.1:${redisPort}`]);
    await waitFor(() => /listening on http:\/\/127\.0\.0\.1:\d+/.test(cli.stdout()), 'the server to listen', 45_000);
    const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(cli.stdout())![1]!;

    redis.kill('SIGKILL');
    await new Promise((resolve) => (redis.exitCode === null && redis.signalCode === null ? redis.once('exit', resolve) : resolve(undefined)));
    // Redis' port answers but drops every connection: each retry of both clients is counted, and each fails.
    const outage = await standIn(redisPort, true);
    await waitFor(() => outage.connections() >= 8, 'both clients to retry several times', 45_000).catch((error: unknown) => {
      throw new Error(`${String(error)}; ${outage.connections()} connections; output:\n${cli.stdout().slice(-3000)}\n${cli.stderr().slice(-2000)}`);
    });
    expect((await fetch(`${url}/health`)).status).toBe(200);
    const unreachable = () => cli.stdout().split('\n').filter((line) => line.includes('redis unreachable'));
    // Logged as each client's first retry fails; the lines may still be on their way.
    await waitFor(() => unreachable().length >= 2, 'the outage to be logged by both clients', 45_000);
    expect(unreachable().map((line) => (JSON.parse(line) as { role: string }).role).sort()).toEqual(['publisher', 'subscriber']);

    await outage.close(); // Redis can have its port back
    await startRedis(redisPort);
    await waitFor(() => cli.stdout().split('\n').filter((line) => line.includes('redis reachable again')).length === 2, 'both clients to reconnect', 45_000);
    expect(cli.stdout().split('\n').filter((line) => line.includes('redis unreachable'))).toHaveLength(2);

    cli.child.kill('SIGTERM');
    expect(await exitCode(cli, 30_000)).toBe(0);
  }, 180_000);
});
