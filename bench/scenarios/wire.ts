/**
 * The wire alone, as a second floor beside the bulkInsert one: what moving N
 * documents to a fresh client costs before anything is checked or stored.
 * - `pull-pages`: this project's server, seeded as for the initial sync; a
 *   bare protocol connection pulls every page (2000 events, the plugin's
 *   default) and drops it. The server's reading and encoding, socket.io and
 *   the client's JSON parsing are in it; the plugin's checks and writes are not.
 * - `documents`: the same N todos alone, without any sync metadata, in pages
 *   of 2000 from a plain socket.io server to a plain socket.io client. No
 *   sync over socket.io can move them for less.
 * Pulls of the two kinds alternate run by run. The initial sync cannot beat
 * the bulkInsert floor plus `pull-pages`; the summary turns that into the
 * best ratio to RxDB this protocol could reach with no client work at all.
 */
import { createServer } from 'node:http';
import { Server } from 'socket.io';
import { makeTodos, type Todo } from '../lib/documents.js';
import { connectOwnSocket, listenOnLoopback } from '../lib/listen.js';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import type { Scenario } from '../lib/scenario.js';
import { median } from '../lib/stats.js';

const PAGE = 2000;

export const wire: Scenario = {
  name: 'wire',
  async run({ config, systems, record, log }) {
    const ours = systems.find((system) => system.id === 'offline-sync');
    for (const n of config.sizes) {
      const todos = makeTodos(n);
      const pages: number[] = [];
      const documents: number[] = [];
      for (let run = 0; run < config.runs; run++) {
        if (ours) {
          const server = await ours.startServer();
          await server.seed(todos);
          const puller = await server.openPuller!();
          gc();
          const started = performance.now();
          const received = await profiled(`wire-pull-pages-${n}-run${run + 1}`, () =>
            withTimeout(puller.pullAll(PAGE), config.timeoutMs, `bare pulls of ${n}`),
          );
          pages.push(performance.now() - started);
          if (received !== n) throw new Error(`bare pulls received ${received} events, expected ${n}`);
          puller.close();
          await server.stop();
        }
        documents.push(await documentsAlone(todos, run, config.timeoutMs));
        log(`wire n=${n} run ${run + 1}: ${ours ? `pull pages ${pages.at(-1)!.toFixed(0)} ms, ` : ''}documents alone ${documents.at(-1)!.toFixed(0)} ms`);
      }
      if (ours) record({ scenario: 'wire', system: 'offline-sync', n, metric: 'pull-pages', unit: 'ms', value: median(pages), runs: pages });
      record({ scenario: 'wire', system: 'bare-socket.io', n, metric: 'documents', unit: 'ms', value: median(documents), runs: documents });
    }
  },
};

/** The todos alone, in pages, from a plain socket.io server to a plain client; returns the time taken. */
async function documentsAlone(todos: readonly Todo[], run: number, timeoutMs: number): Promise<number> {
  const httpServer = createServer();
  const server = new Server(httpServer);
  server.on('connection', (socket) => {
    socket.on('page', (from: number, answer: (page: { documents: Todo[]; next: number | null }) => void) => {
      const next = from + PAGE < todos.length ? from + PAGE : null;
      answer({ documents: todos.slice(from, from + PAGE), next });
    });
  });
  const port = await listenOnLoopback(httpServer);
  const client = await connectOwnSocket(`http://127.0.0.1:${port}`);
  try {
    gc();
    const started = performance.now();
    const received = await profiled(`wire-documents-${todos.length}-run${run + 1}`, () =>
      withTimeout(
        (async () => {
          let count = 0;
          for (let from: number | null = 0; from !== null; ) {
            const page = (await client.emitWithAck('page', from)) as { documents: Todo[]; next: number | null };
            count += page.documents.length;
            from = page.next;
          }
          return count;
        })(),
        timeoutMs,
        `${todos.length} documents over bare socket.io`,
      ),
    );
    const elapsed = performance.now() - started;
    if (received !== todos.length) throw new Error(`bare socket.io received ${received} documents, expected ${todos.length}`);
    return elapsed;
  } finally {
    client.close();
    httpServer.closeAllConnections();
    // Closes the HTTP server too.
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
