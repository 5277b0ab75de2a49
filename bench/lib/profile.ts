/**
 * CPU profiles of measured spans (`--profile`): written as .cpuprofile files
 * that Chrome DevTools or VS Code open. Only the span is recorded, not the
 * setup around it (seeding the server, opening databases).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Session } from 'node:inspector/promises';

let session: Session | undefined;
let directory: string | undefined;

export function enableProfiling(outDir: string): void {
  directory = join(outDir, 'profiles');
  mkdirSync(directory, { recursive: true });
}

/** Runs `task`; when profiling is enabled, records a CPU profile of it as `<name>.cpuprofile`. */
export async function profiled<T>(name: string, task: () => Promise<T>): Promise<T> {
  if (!directory) return task();
  if (!session) {
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 200 });
  }
  await session.post('Profiler.start');
  // Every allocation of the span, also those already collected: churn is what costs the scavenger.
  if (process.env.BENCH_HEAP) {
    await session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as never);
  }
  try {
    return await task();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    if (process.env.BENCH_HEAP) {
      const heap = await session.post('HeapProfiler.stopSampling');
      writeFileSync(join(directory, `${name.replace(/[^a-z0-9._-]+/gi, '_')}.heapprofile`), JSON.stringify(heap.profile));
    }
    writeFileSync(join(directory, `${name.replace(/[^a-z0-9._-]+/gi, '_')}.cpuprofile`), JSON.stringify(profile));
  }
}
