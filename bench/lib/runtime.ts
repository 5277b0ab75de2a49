/** Process-level helpers: forcing a garbage collection, sampling memory, waiting. */
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
