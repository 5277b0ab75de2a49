/** Process-level helpers: forcing a garbage collection, sampling memory, waiting. */
import type { ChildProcess } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

/** Collects garbage twice (the second pass frees what finalizers of the first released). */
export function gc(): void {
  collect();
  collect();
}

export interface MemoryPeak {
  /** Highest heapUsed seen above the value when sampling started, in MB. */
  heapMb: number;
  /** Highest rss seen above the value when sampling started, in MB. */
  rssMb: number;
}

/**
 * Samples process.memoryUsage() every `intervalMs` until stopped. Everything
 * runs on one thread, so samples land between tasks; the true peak can be a
 * little higher than what is reported.
 */
export function sampleMemory(intervalMs = 10): { stop(): MemoryPeak } {
  const base = process.memoryUsage();
  let heap = base.heapUsed;
  let rss = base.rss;
  const sample = () => {
    const now = process.memoryUsage();
    if (now.heapUsed > heap) heap = now.heapUsed;
    if (now.rss > rss) rss = now.rss;
  };
  const timer = setInterval(sample, intervalMs);
  return {
    stop() {
      sample();
      clearInterval(timer);
      const mb = (bytes: number) => bytes / 1024 / 1024;
      return { heapMb: mb(heap - base.heapUsed), rssMb: mb(rss - base.rss) };
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Rejects with a message naming what was awaited when `promise` takes longer than `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The first `ready` report of a forked server (`what` names it): rejects
 * when the child fails or exits first, or after a minute, and then kills it.
 */
export function readyReport<R extends { type: string }>(child: ChildProcess, what: string): Promise<Extract<R, { type: 'ready' }>> {
  return withTimeout(
    new Promise<Extract<R, { type: 'ready' }>>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => reject(new Error(`${what} exited (${signal ?? `code ${code}`}) before it was ready`)));
      child.on('message', (report: R) => report.type === 'ready' && resolve(report as Extract<R, { type: 'ready' }>));
    }),
    60_000,
    `${what} to be ready`,
  ).catch((error: unknown) => {
    child.kill('SIGKILL');
    throw error;
  });
}
