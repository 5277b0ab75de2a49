/**
 * The abuse scenario's server, run as a child process (scenarios/abuse.ts
 * forks it) so that its memory and event loop are its own: the flooder and
 * the bystander load the bench process, and what this process spends is the
 * server's alone. The built package (dist/) with every option at its default
 * but `httpServer`; its log goes to stdout, which the parent discards.
 *
 * Over IPC it reports `ready` (port, seeded documents), every dropped and
 * disconnected client with the time it happened, and on request its memory:
 * RSS now, the highest RSS sampled since the last reset, the heap, its
 * event loop's delay and CPU time since the last reset, and the events
 * clients pushed.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createSyncServer, type IncomingEvent } from 'rxdb-offline-sync/server';
// Only to stamp the seeded events, before anything is measured.
import { formatHlc } from '../../src/shared/hlc.js';
import { makeTodos } from './documents.js';
import { gc } from './runtime.js';

export type ServerReport =
  | { type: 'ready'; port: number; seeded: number }
  | { type: 'dropped'; clientId: string; reason: string; at: number }
  | { type: 'disconnect'; clientId: string; reason: string; at: number }
  | {
      type: 'stats';
      id: number;
      rssMb: number;
      peakRssMb: number;
      heapMb: number;
      loopMaxMs: number;
      loopP99Ms: number;
      /** CPU time (user and system) since the last reset, and the wall time it was spent in. */
      cpuMs: number;
      wallMs: number;
      /** Pushed events stored, and those that were already stored, since the server started. */
      accepted: number;
      duplicates: number;
    };

export type ServerRequest = { type: 'stats'; id: number; reset?: boolean; gc?: boolean } | { type: 'exit' };

const SAMPLE_MS = 10;
const SEED_CHUNK = 5000;
const SEED_WRITERS = 8;
const mb = (bytes: number) => bytes / 1024 / 1024;

async function main(): Promise<void> {
  const seed = Number(process.argv[2] ?? 20_000);
  const send = (report: ServerReport) => process.send!(report);
  const httpServer = createServer();
  const server = createSyncServer({ httpServer });
  await server.start();

  // Seeded as the other scenarios seed: straight into storage, by a few writers with UUIDs for ids.
  const todos = makeTodos(seed, 'abuse');
  const writers = Array.from({ length: SEED_WRITERS }, () => randomUUID());
  const millis = Date.now();
  for (let start = 0; start < todos.length; start += SEED_CHUNK) {
    const events: IncomingEvent[] = todos.slice(start, start + SEED_CHUNK).map((todo, i) => {
      const writer = writers[(start + i) % SEED_WRITERS]!;
      return { id: randomUUID(), collection: 'todos', documentId: todo.id, op: 'insert', data: { ...todo }, baseEventId: null, hlc: formatHlc({ millis, counter: start + i, node: writer }), clientId: writer };
    });
    await server.getStorage().saveEvents(events);
  }

  server.events.on('client-dropped', ({ clientId, reason }) => send({ type: 'dropped', clientId, reason, at: Date.now() }));
  server.events.on('client-disconnect', ({ clientId, reason }) => send({ type: 'disconnect', clientId, reason, at: Date.now() }));

  let peak = process.memoryUsage.rss();
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, SAMPLE_MS);
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  let cpuSince = process.cpuUsage();
  let wallSince = performance.now();

  process.on('message', (request: ServerRequest) => {
    if (request.type === 'exit') {
      clearInterval(sampler);
      loop.disable();
      void server.stop().finally(() => process.exit(0));
      return;
    }
    if (request.gc) gc();
    const rss = process.memoryUsage.rss();
    peak = Math.max(peak, rss);
    const cpu = process.cpuUsage(cpuSince);
    send({
      type: 'stats',
      id: request.id,
      rssMb: mb(rss),
      peakRssMb: mb(peak),
      heapMb: mb(process.memoryUsage().heapUsed),
      loopMaxMs: loop.max / 1e6,
      loopP99Ms: loop.percentile(99) / 1e6,
      cpuMs: (cpu.user + cpu.system) / 1000,
      wallMs: performance.now() - wallSince,
      accepted: server.getStats().accepted,
      duplicates: server.getStats().duplicates,
    });
    if (request.reset) {
      peak = rss;
      loop.reset();
      cpuSince = process.cpuUsage();
      wallSince = performance.now();
    }
  });

  httpServer.listen(0, '127.0.0.1', () => send({ type: 'ready', port: (httpServer.address() as AddressInfo).port, seeded: seed }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
