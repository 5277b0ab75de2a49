/**
 * Throughput with several clients (10 by default) pushing at the same moment.
 * - server: bare protocol connections push prepared inserts in batches of
 *   500, each waiting for its answer before sending the next (as the real
 *   clients do). Timed until every push is acknowledged. This loads the
 *   server alone: this project on each server storage (memory, SQLite,
 *   PostgreSQL), RxDB's websocket server on its RxDB database (memory).
 * - end-to-end: real clients, connected and idle, each bulkInsert their own
 *   documents; timed until the server has stored all of them (`end-to-end`),
 *   and until every client holds every client's documents (`converged`).
 *   All clients share the benchmark's one thread, so a system that applies
 *   other clients' documents while its own are still being pushed (this
 *   project applies live messages as they come) pays for that before the
 *   first mark; `converged` counts the same work for both.
 * Reported as documents per second.
 */
import type { SyncStorage } from 'rxdb-offline-sync/server';
import type { BenchClient, BenchPusher, BenchSystem } from '../systems/types.js';
import { Counter } from '../lib/counter.js';
import { makeTodos, type Todo } from '../lib/documents.js';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import type { Scenario, ScenarioContext } from '../lib/scenario.js';
import { median } from '../lib/stats.js';
import { storageVariants, type StorageVariant } from '../lib/storages.js';

const PUSH_BATCH = 500;

export const throughput: Scenario = {
  name: 'throughput',
  async run(ctx) {
    const { config, systems, log } = ctx;
    const batches = Array.from({ length: config.throughputClients }, (_, i) => makeTodos(config.throughputDocs, `tp${i}`, i + 1));
    const variants = await storageVariants(log);
    try {
      for (const system of systems) {
        const serverVariants = system.id === 'offline-sync' ? variants : variants.filter((v) => v.name === 'memory');
        for (const variant of serverVariants) await measure(ctx, system, variant, batches, 'server');
      }
      for (const system of systems) await measure(ctx, system, variants[0]!, batches, 'end-to-end');
    } finally {
      for (const variant of variants) await variant.finish();
    }
  },
};

async function measure(
  { config, record, log }: ScenarioContext,
  system: BenchSystem,
  variant: StorageVariant,
  batches: readonly Todo[][],
  mode: 'server' | 'end-to-end',
): Promise<void> {
  const total = batches.reduce((sum, batch) => sum + batch.length, 0);
  const rates: number[] = [];
  const convergedRates: number[] = [];
  for (let run = 0; run < config.runs; run++) {
    const { storage, dispose } = await variant.create(run);
    const server = await system.startServer(storage ? { storage: storage as SyncStorage } : {});
    const label = `${system.label} on ${variant.name} (${mode})`;
    let elapsed = 0;
    if (mode === 'server') {
      const pushers: BenchPusher[] = await Promise.all(batches.map(() => server.openPusher()));
      gc();
      const started = performance.now();
      await profiled(`throughput-server-${system.id}-${variant.name}-run${run + 1}`, () =>
        withTimeout(
          Promise.all(pushers.map(async (pusher, i) => {
            const todos = batches[i]!;
            for (let start = 0; start < todos.length; start += PUSH_BATCH) await pusher.push(todos.slice(start, start + PUSH_BATCH));
          })),
          config.timeoutMs,
          `${label}: ${total} pushed documents acknowledged`,
        ),
      );
      elapsed = performance.now() - started;
      pushers.forEach((pusher) => pusher.close());
      if (server.written !== total) throw new Error(`${label}: the server stored ${server.written} documents, expected ${total}`);
    } else {
      const clients: BenchClient[] = [];
      for (let i = 0; i < batches.length; i++) clients.push(await server.openClient());
      await Promise.all(clients.map((client) => client.startSync()));
      const copies = batches.map((batch) => batch.map((todo) => ({ ...todo, tags: [...todo.tags] })));
      // Documents each client holds: every document is inserted once into each client, by the app or by the sync.
      const held = clients.map((client) => {
        const counter = new Counter();
        const subscription = client.todos.eventBulks$.subscribe((bulk) => counter.add(bulk.events.filter((event) => event.operation === 'INSERT').length));
        return { counter, subscription };
      });
      gc();
      const started = performance.now();
      let converged = 0;
      await profiled(`throughput-e2e-${system.id}-${variant.name}-run${run + 1}`, async () => {
        await Promise.all(clients.map((client, i) => client.todos.bulkInsert(copies[i]!)));
        await withTimeout(server.waitForWritten(total), config.timeoutMs, `${label}: the server to store ${total} documents`);
        elapsed = performance.now() - started;
        await withTimeout(Promise.all(held.map(({ counter }) => counter.reach(total))), config.timeoutMs, `${label}: every client to hold all ${total} documents`);
        converged = performance.now() - started;
      });
      held.forEach(({ subscription }) => subscription.unsubscribe());
      for (const client of clients) await client.close();
      convergedRates.push((total / converged) * 1000);
      log(`throughput converged ${system.id} ${variant.name} run ${run + 1}: ${convergedRates.at(-1)!.toFixed(0)} docs/s (${converged.toFixed(0)} ms)`);
    }
    await server.stop();
    await dispose();
    rates.push((total / elapsed) * 1000);
    log(`throughput ${mode} ${system.id} ${variant.name} run ${run + 1}: ${rates.at(-1)!.toFixed(0)} docs/s (${elapsed.toFixed(0)} ms)`);
  }
  record({
    scenario: 'throughput',
    system: system.id,
    storage: variant.name,
    n: total,
    metric: mode,
    unit: 'docs/s',
    value: median(rates),
    runs: rates,
    note: `${batches.length} clients × ${batches[0]!.length} docs`,
  });
  if (convergedRates.length > 0) {
    record({
      scenario: 'throughput',
      system: system.id,
      storage: variant.name,
      n: total,
      metric: 'converged',
      unit: 'docs/s',
      value: median(convergedRates),
      runs: convergedRates,
      note: `${batches.length} clients × ${batches[0]!.length} docs`,
    });
  }
}
