/**
 * `npm start` ends, and frees its port, when npm, tsx or the script gets
 * SIGTERM or SIGINT: a process manager, a container runtime or an editor's
 * stop button signals the one process it started, which is npm.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from './helpers.js';

const root = join(import.meta.dirname, '..');

/** Alive and not a zombie, as /proc shows it (a process killed but not yet reaped holds no port, but is not running either). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !['Z', 'X'].includes(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3));
  } catch {
    return false;
  }
}

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

interface Started {
  npm: ChildProcess;
  npmExited: Promise<unknown>;
  /** The node process that runs scripts/start.ts (and the server in it). */
  scriptPid: number;
  /** tsx's own process, which runs the script's process and relays signals to it. */
  tsxPid: number;
  port: number;
  output: () => string;
}

const started: Started[] = [];
afterEach(() => {
  // Whatever a failed test left running is ended, so that it holds no port.
  for (const { npm, scriptPid, tsxPid } of started.splice(0)) {
    for (const pid of [scriptPid, tsxPid, npm.pid]) if (pid && running(pid)) process.kill(pid, 'SIGKILL');
  }
});

/** Runs `npm start` as a user would, on a free port with memory storage; resolves once the server answers its health check. */
async function npmStart(): Promise<Started> {
  const npm = spawn('npm', ['start'], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', SYNC_STORAGE: 'memory', LOG_LEVEL: 'info', NO_COLOR: '1' },
  });
  const npmExited = new Promise((resolve) => npm.once('exit', resolve));
  let output = '';
  npm.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  npm.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const entry: Partial<Started> & { npm: ChildProcess } = { npm, npmExited, output: () => output };
  started.push(entry as Started);

  // The first run may build the example app first, which takes a while on a slow machine.
  // The URL line and the log line with the process id come on two streams, in either order.
  await waitFor(() => /listening on http:\/\/127\.0\.0\.1:\d+/.test(output) && /"pid":\d+/.test(output), `npm start to print its URL and pid; output so far:\n${output}`, 120_000);
  const port = Number(/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(output)![1]);
  const scriptPid = Number(/"pid":(\d+)/.exec(output)![1]);
  Object.assign(entry, { port, scriptPid, tsxPid: parentOf(scriptPid) });
  await waitFor(
    async () => (await fetch(`http://127.0.0.1:${port}/health`).catch(() => undefined))?.status === 200,
    'the health check to answer',
    30_000,
  );
  return entry as Started;
}

describe.skipIf(process.platform !== 'linux')('npm start', () => {
  it.each([
    // What a process manager or container runtime sends to the process it started.
    ['npm', 'SIGTERM'],
    // Ctrl-C in a terminal signals the whole foreground group, tsx included. (SIGINT to npm alone
    // is held by the shell npm runs the script through until the script ends: not covered.)
    ['tsx', 'SIGINT'],
  ] as const)('stops everything and frees its port when %s gets %s', async (target, signal) => {
    const run = await npmStart();
    expect(run.tsxPid).not.toBe(run.npm.pid); // the script runs below npm, not as npm

    process.kill({ npm: run.npm.pid!, tsx: run.tsxPid, script: run.scriptPid }[target], signal);

    await waitFor(() => portIsFree(run.port), `port ${run.port} to be free; output:\n${run.output()}`, 15_000);
    await waitFor(() => !running(run.scriptPid) && !running(run.tsxPid), 'the script and tsx to end', 15_000);
    await run.npmExited;
    expect(run.output()).toContain('"msg":"sync server stopped"'); // a graceful shutdown, not a kill
  }, 180_000);
});
