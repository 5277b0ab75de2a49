/**
 * Push: a connected, idle client writes N documents locally in one
 * bulkInsert. Timed from the write until the server has stored all N
 * (`time`), and until the client has also settled its own bookkeeping of
 * the push (`settled`; this project folds acknowledgements while idle).
 * The systems' runs alternate (see alternating()).
 */
import { makeTodos } from '../lib/documents.js';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import { alternating, type Scenario } from '../lib/scenario.js';
import { median } from '../lib/stats.js';
import type { SystemId } from '../systems/types.js';

export const push: Scenario = {
  name: 'push',
  async run({ config, systems, record, log }) {
    const n = config.pushCount;
    const todos = makeTodos(n, 'push');
    const results = new Map<SystemId, { times: number[]; settledTimes: number[] }>(systems.map((system) => [system.id, { times: [], settledTimes: [] }]));
    for (const { system, run } of alternating(systems, config.shortRuns)) {
      const { times, settledTimes } = results.get(system.id)!;
      const server = await system.startServer();
      const client = await server.openClient();
      await client.startSync();
      const copies = todos.map((todo) => ({ ...todo, tags: [...todo.tags] }));
      gc();
      const started = performance.now();
      await profiled(`push-${system.id}-${n}-run${run + 1}`, async () => {
        const result = await client.todos.bulkInsert(copies);
        if (result.error.length > 0) throw new Error(`${system.label}: local bulkInsert failed for ${result.error.length} documents`);
        await withTimeout(server.waitForWritten(n), config.timeoutMs, `${system.label}: the server to store ${n} pushed documents`);
        times.push(performance.now() - started);
        await withTimeout(client.settled(), config.timeoutMs, `${system.label}: the client to settle after its push`);
        settledTimes.push(performance.now() - started);
      });
      await client.close();
      await server.stop();
      log(`push ${system.id} n=${n} run ${run + 1}: ${times.at(-1)!.toFixed(0)} ms, settled ${settledTimes.at(-1)!.toFixed(0)} ms`);
    }
    for (const system of systems) {
      const { times, settledTimes } = results.get(system.id)!;
      record({ scenario: 'push', system: system.id, n, metric: 'time', unit: 'ms', value: median(times), runs: times });
      record({ scenario: 'push', system: system.id, n, metric: 'settled', unit: 'ms', value: median(settledTimes), runs: settledTimes });
    }
  },
};
