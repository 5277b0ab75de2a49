/**
 * Initial sync: the server holds N documents, a fresh client with an empty
 * database starts syncing. Timed from starting replication until the first
 * sync has finished and the client holds all N documents; peak memory is
 * sampled over the same span. The systems' runs alternate (see alternating()).
 */
import { makeTodos } from '../lib/documents.js';
import { profiled } from '../lib/profile.js';
import { gc, sampleMemory, withTimeout } from '../lib/runtime.js';
import { alternating, type Scenario } from '../lib/scenario.js';
import { median } from '../lib/stats.js';
import type { SystemId } from '../systems/types.js';

export const initialSync: Scenario = {
  name: 'initial-sync',
  async run({ config, systems, record, log }) {
    for (const n of config.sizes) {
      const todos = makeTodos(n);
      const results = new Map<SystemId, { times: number[]; heaps: number[]; rsses: number[] }>(
        systems.map((system) => [system.id, { times: [], heaps: [], rsses: [] }]),
      );
      for (const { system, run } of alternating(systems, config.runs)) {
        const { times, heaps, rsses } = results.get(system.id)!;
        const server = await system.startServer();
        await server.seed(todos);
        const client = await server.openClient();
        gc();
        const memory = sampleMemory();
        const started = performance.now();
        await profiled(`initial-sync-${system.id}-${n}-run${run + 1}`, () =>
          withTimeout(client.startSync(), config.timeoutMs, `${system.label}: initial sync of ${n}`),
        );
        times.push(performance.now() - started);
        const peak = memory.stop();
        const count = await client.todos.count().exec();
        if (count !== n) throw new Error(`${system.label}: the client holds ${count} documents after the initial sync, expected ${n}`);
        heaps.push(peak.heapMb);
        rsses.push(peak.rssMb);
        await client.close();
        await server.stop();
        log(`initial-sync ${system.id} n=${n} run ${run + 1}: ${times.at(-1)!.toFixed(0)} ms, heap +${peak.heapMb.toFixed(0)} MB`);
      }
      for (const system of systems) {
        const { times, heaps, rsses } = results.get(system.id)!;
        record({ scenario: 'initial-sync', system: system.id, n, metric: 'time', unit: 'ms', value: median(times), runs: times });
        record({ scenario: 'initial-sync', system: system.id, n, metric: 'peak-heap', unit: 'MB', value: median(heaps), runs: heaps });
        record({ scenario: 'initial-sync', system: system.id, n, metric: 'peak-rss', unit: 'MB', value: median(rsses), runs: rsses });
      }
    }
  },
};
