/**
 * The floor: a local RxDB bulkInsert of the same N documents into an empty
 * collection on memory storage. No sync system can store N pulled documents
 * faster than this.
 */
import { dropDatabase, openTodoDatabase } from '../lib/database.js';
import { makeTodos } from '../lib/documents.js';
import { profiled } from '../lib/profile.js';
import { gc } from '../lib/runtime.js';
import type { Scenario } from '../lib/scenario.js';
import { median } from '../lib/stats.js';

export const bulkInsertFloor: Scenario = {
  name: 'floor',
  async run({ config, record, log }) {
    for (const n of config.sizes) {
      const todos = makeTodos(n);
      const times: number[] = [];
      for (let run = 0; run < config.runs; run++) {
        const db = await openTodoDatabase('floor');
        const copies = todos.map((todo) => ({ ...todo, tags: [...todo.tags] }));
        gc();
        const started = performance.now();
        const result = await profiled(`floor-${n}-run${run + 1}`, () => db.todos.bulkInsert(copies));
        // RxDB's memory storage applies writes to its indexes lazily; a count forces that work into the timing.
        const count = await db.todos.count().exec();
        times.push(performance.now() - started);
        if (result.error.length > 0 || count !== n) throw new Error(`bulkInsert of ${n} stored ${count} documents, ${result.error.length} errors`);
        await dropDatabase(db);
        log(`floor n=${n} run ${run + 1}: ${times.at(-1)!.toFixed(0)} ms`);
      }
      record({ scenario: 'floor', system: 'local-bulkInsert', n, metric: 'time', unit: 'ms', value: median(times), runs: times });
    }
  },
};
