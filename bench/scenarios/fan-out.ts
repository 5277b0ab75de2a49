/**
 * Fan-out: one writer, many readers (12 by default), all connected.
 * - latency: documents inserted one at a time on the writer, each timed
 *   until every reader has it (p50 and p99);
 * - burst: the writer bulkInserts a batch, timed until every reader holds all of it.
 * The systems' runs alternate (see alternating()).
 */
import type { BenchClient, SystemId } from '../systems/types.js';
import { makeTodos } from '../lib/documents.js';
import { countArrivals } from '../lib/observe.js';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import { alternating, type Scenario } from '../lib/scenario.js';
import { median, percentile } from '../lib/stats.js';
import { sequentialWrites } from './live-latency.js';

export const fanOut: Scenario = {
  name: 'fanout',
  async run({ config, systems, record, log }) {
    const { fanoutReaders: readerCount, fanoutWrites, fanoutBurst } = config;
    const writes = makeTodos(fanoutWrites + 10, 'fan');
    const burst = makeTodos(fanoutBurst, 'burst');
    const allResults = new Map<SystemId, { p50: number[]; p99: number[]; burst: number[] }>(
      systems.map((system) => [system.id, { p50: [], p99: [], burst: [] }]),
    );
    for (const { system, run } of alternating(systems, config.shortRuns)) {
      const results = allResults.get(system.id)!;
      const server = await system.startServer();
      const writer = await server.openClient();
      const readers: BenchClient[] = [];
      // One at a time: RxDB's open-source edition allows few open collections and waits when near its limit.
      for (let i = 0; i < readerCount; i++) readers.push(await server.openClient());
      await Promise.all([writer, ...readers].map((client) => client.startSync()));
      await sequentialWrites(writer, readers, writes.slice(0, 10), config.timeoutMs);
      gc();
      const latencies = await profiled(`fanout-latency-${system.id}-run${run + 1}`, () =>
        sequentialWrites(writer, readers, writes.slice(10), config.timeoutMs),
      );
      results.p50.push(percentile(latencies, 50));
      results.p99.push(percentile(latencies, 99));

      const counters = readers.map((reader) => countArrivals(reader.todos, 'burst-'));
      const copies = burst.map((todo) => ({ ...todo, tags: [...todo.tags] }));
      gc();
      const started = performance.now();
      await profiled(`fanout-burst-${system.id}-run${run + 1}`, async () => {
        await writer.todos.bulkInsert(copies);
        await withTimeout(
          Promise.all(counters.map(({ counter }) => counter.reach(fanoutBurst))),
          config.timeoutMs,
          `${fanoutBurst} documents to reach ${readerCount} readers`,
        );
      });
      results.burst.push(performance.now() - started);
      counters.forEach((counter) => counter.stop());
      for (const client of [writer, ...readers]) await client.close();
      await server.stop();
      log(`fanout ${system.id} run ${run + 1}: p50 ${results.p50.at(-1)!.toFixed(2)} ms, p99 ${results.p99.at(-1)!.toFixed(2)} ms, burst ${results.burst.at(-1)!.toFixed(0)} ms`);
    }
    for (const system of systems) {
      const results = allResults.get(system.id)!;
      const base = { scenario: 'fanout', system: system.id, unit: 'ms', note: `${readerCount} readers` } as const;
      record({ ...base, n: fanoutWrites, metric: 'p50', value: median(results.p50), runs: results.p50 });
      record({ ...base, n: fanoutWrites, metric: 'p99', value: median(results.p99), runs: results.p99 });
      record({ ...base, n: fanoutBurst, metric: 'burst', value: median(results.burst), runs: results.burst });
    }
  },
};
