/**
 * Initial sync over a slow link: the same as `initial-sync`, but the client
 * reaches the server through a proxy that adds a round-trip time and limits
 * the bandwidth (lib/slow-link.ts), as a phone on a mobile network would.
 * On loopback a pull page costs only CPU; here every page also costs a round
 * trip and its bytes on the wire. Run twice per system: with each server's
 * defaults (no compression), and with WebSocket compression turned on in
 * both servers (`compressed`).
 */
import { makeTodos } from '../lib/documents.js';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import type { Scenario } from '../lib/scenario.js';
import { startSlowLink } from '../lib/slow-link.js';
import { median } from '../lib/stats.js';

export const slowLink: Scenario = {
  name: 'slow-link',
  async run({ config, systems, record, log }) {
    const { n, rttMs, mbitPerSecond } = config.slowLink;
    const note = `${rttMs} ms round trip, ${mbitPerSecond} Mbit/s`;
    const todos = makeTodos(n, 'slow-link');
    for (const compress of [false, true]) {
      const metric = compress ? 'compressed' : 'time';
      for (const system of systems) {
        const times: number[] = [];
        for (let run = 0; run < config.runs; run++) {
          const server = await system.startServer({ compress });
          await server.seed(todos);
          const link = await startSlowLink(server.port, { rttMs, mbitPerSecond });
          const client = await server.openClient({ port: link.port });
          gc();
          const started = performance.now();
          await profiled(`slow-link-${metric}-${system.id}-${n}-run${run + 1}`, () =>
            withTimeout(client.startSync(), config.timeoutMs, `${system.label}: initial sync of ${n} over a slow link`),
          );
          times.push(performance.now() - started);
          const count = await client.todos.count().exec();
          if (count !== n) throw new Error(`${system.label}: the client holds ${count} documents after the initial sync over a slow link, expected ${n}`);
          await client.close();
          await link.close();
          await server.stop();
          log(`slow-link ${system.id} n=${n} run ${run + 1}${compress ? ', compressed' : ''}: ${times.at(-1)!.toFixed(0)} ms (${note})`);
        }
        record({ scenario: 'slow-link', system: system.id, n, metric, unit: 'ms', value: median(times), runs: times, note });
      }
    }
  },
};
