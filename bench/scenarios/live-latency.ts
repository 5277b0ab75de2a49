/**
 * Live latency: two connected clients A and B. One at a time, a document is
 * inserted on A; timed until B's collection emits it. Percentiles over the
 * writes of one run; the median of each percentile over the runs.
 */
import type { BenchClient } from '../systems/types.js';
import { makeTodos } from '../lib/documents.js';
import { arrival } from '../lib/observe.js';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import type { Scenario } from '../lib/scenario.js';
import { median, percentile } from '../lib/stats.js';

const WARMUP_WRITES = 20;

/** Inserts `todos` on `writer` one by one; for each, the ms until every reader has it. */
export async function sequentialWrites(
  writer: BenchClient,
  readers: readonly BenchClient[],
  todos: readonly ReturnType<typeof makeTodos>[number][],
  timeoutMs: number,
): Promise<number[]> {
  const latencies: number[] = [];
  for (const todo of todos) {
    const arrived = Promise.all(readers.map((reader) => arrival(reader.todos, todo.id)));
    const started = performance.now();
    await writer.todos.insert({ ...todo, tags: [...todo.tags] });
    await withTimeout(arrived, timeoutMs, `document ${todo.id} to reach ${readers.length} reader(s)`);
    latencies.push(performance.now() - started);
  }
  return latencies;
}

export const liveLatency: Scenario = {
  name: 'latency',
  async run({ config, systems, record, log }) {
    const todos = makeTodos(WARMUP_WRITES + config.latencyWrites, 'live');
    for (const system of systems) {
      const perRun = { p50: [] as number[], p95: [] as number[], p99: [] as number[] };
      for (let run = 0; run < config.runs; run++) {
        const server = await system.startServer();
        const a = await server.openClient();
        const b = await server.openClient();
        await Promise.all([a.startSync(), b.startSync()]);
        await sequentialWrites(a, [b], todos.slice(0, WARMUP_WRITES), config.timeoutMs);
        gc();
        const latencies = await profiled(`latency-${system.id}-run${run + 1}`, () =>
          sequentialWrites(a, [b], todos.slice(WARMUP_WRITES), config.timeoutMs),
        );
        perRun.p50.push(percentile(latencies, 50));
        perRun.p95.push(percentile(latencies, 95));
        perRun.p99.push(percentile(latencies, 99));
        await Promise.all([a.close(), b.close()]);
        await server.stop();
        log(`latency ${system.id} run ${run + 1}: p50 ${perRun.p50.at(-1)!.toFixed(2)} ms, p99 ${perRun.p99.at(-1)!.toFixed(2)} ms`);
      }
      for (const [metric, values] of Object.entries(perRun)) {
        record({ scenario: 'latency', system: system.id, n: config.latencyWrites, metric, unit: 'ms', value: median(values), runs: values });
      }
    }
  },
};
