/**
 * The scale scenario's sync server, run as a child process of its own
 * (scenarios/scale.ts forks it): its event loop, CPU and memory are the
 * server's alone, and it can be killed with SIGKILL and started again on the
 * same SQLite file and port. The built package (dist/), configured as a
 * deployment for 10,000 devices would be (see SCALE_SERVER_OPTIONS); its log
 * goes to stdout, which the parent discards.
 *
 * Storage: SQLite in the file given, or (for the two-instance part)
 * PostgreSQL with socket.io's Redis adapter, as test/multi-instance.test.ts
 * sets them up.
 *
 * Over IPC it reports `ready` once listening (with that time on the shared
 * monotonic clock), and on request its event loop's longest stall and p99
 * since it started listening or since the last reset, its RSS and CPU time,
 * its connections and the storage's latest sequence.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { PostgresSyncStorage, SqliteSyncStorage, createSyncServer, type SyncServerOptions, type SyncStorage } from 'rxdb-offline-sync/server';
import { clock } from './scale-socket.js';

export type ScaleServerConfig =
  | { storage: 'sqlite'; path: string; port: number }
  | { storage: 'postgres'; connectionString: string; redisUrl: string; redisKey: string; port: number };

export type ScaleServerReport =
  | { type: 'ready'; port: number; listeningAt: number; startedAt: number }
  | {
      type: 'stats';
      id: number;
      loopMaxMs: number;
      loopP99Ms: number;
      loopMeanMs: number;
      rssMb: number;
      peakRssMb: number;
      /** CPU time (user and system) since the last reset, and the wall time it was spent in. */
      cpuMs: number;
      wallMs: number;
      clients: number;
      latestSeq: number;
      accepted: number;
    };

export type ScaleServerRequest = { type: 'stats'; id: number; reset?: boolean } | { type: 'exit' };

/**
 * The limits a deployment for 10,000 devices sets, where the defaults are
 * made for a smaller one (or would take the load generator, all of whose
 * devices come from 127.0.0.1, for abuse):
 * - maxHandshakesPerSecond 2500 (default 1000): 10,000 devices back within
 *   about 4 s after a restart, SERVER_BUSY with retryAfterMs for the excess;
 * - rateLimit 5000 messages/s per connection and per user (default 300 and
 *   1500): a writer of this bench pushes one event per push, as fast as
 *   acknowledgements come;
 * - loginLimit 100,000 failed logins per address (default 30): every device
 *   here shares one address, as behind a carrier's NAT.
 * Each device is a user of its own (authenticate takes the token as the
 * user's id), so per-user limits and client-id claims apply as in production.
 */
export const SCALE_SERVER_OPTIONS = {
  maxHandshakesPerSecond: 2500,
  rateLimit: { windowMs: 1000, max: 5000, maxPerUser: 5000 },
  loginLimit: { windowMs: 60_000, perConnection: 5, perAddress: 100_000 },
} as const satisfies Partial<SyncServerOptions>;

const SAMPLE_MS = 50;
const mb = (bytes: number) => bytes / 1024 / 1024;

async function main(): Promise<void> {
  const startedAt = clock();
  const config = JSON.parse(process.argv[2]!) as ScaleServerConfig;
  const send = (report: ScaleServerReport) => process.send?.(report);
  // The parent is gone (it failed, or was killed): so is this server.
  process.on('disconnect', () => process.exit(0));

  let storage: SyncStorage;
  let adapter: SyncServerOptions['adapter'];
  const closers: (() => Promise<unknown>)[] = [];
  if (config.storage === 'sqlite') {
    storage = new SqliteSyncStorage({ path: config.path });
  } else {
    const pub = createClient({ url: config.redisUrl });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    closers.push(() => Promise.allSettled([pub.quit(), sub.quit()]));
    storage = new PostgresSyncStorage({ connectionString: config.connectionString, poolSize: 8 });
    adapter = createAdapter(pub, sub, { key: config.redisKey });
  }

  const httpServer = createServer();
  const server = createSyncServer<{ id: string }>({
    httpServer,
    storage,
    ...(adapter ? { adapter } : {}),
    authenticate: (_socket, token) => (token ? { id: token } : null),
    ...SCALE_SERVER_OPTIONS,
  });
  await server.start();

  let peak = process.memoryUsage.rss();
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, SAMPLE_MS);
  const loop = monitorEventLoopDelay({ resolution: 5 });
  let cpuSince = process.cpuUsage();
  let wallSince = clock();

  process.on('message', (request: ScaleServerRequest) => {
    if (request.type === 'exit') {
      clearInterval(sampler);
      loop.disable();
      void server
        .stop()
        .then(() => storage.close())
        .then(() => Promise.allSettled(closers.map((close) => close())))
        .finally(() => process.exit(0));
      return;
    }
    const rss = process.memoryUsage.rss();
    peak = Math.max(peak, rss);
    const cpu = process.cpuUsage(cpuSince);
    void storage.getLatestSequence().then((latestSeq) => {
      send({
        type: 'stats',
        id: request.id,
        loopMaxMs: loop.max / 1e6,
        loopP99Ms: loop.percentile(99) / 1e6,
        loopMeanMs: loop.mean / 1e6,
        rssMb: mb(rss),
        peakRssMb: mb(peak),
        cpuMs: (cpu.user + cpu.system) / 1000,
        wallMs: clock() - wallSince,
        clients: server.getClientsCount(),
        latestSeq,
        accepted: server.getStats().accepted,
      });
      if (request.reset) {
        peak = rss;
        loop.reset();
        cpuSince = process.cpuUsage();
        wallSince = clock();
      }
    });
  });

  // The CLI's way: the default listen backlog (511).
  httpServer.listen(config.port, '127.0.0.1', () => {
    loop.enable();
    send({ type: 'ready', port: (httpServer.address() as AddressInfo).port, listeningAt: clock(), startedAt });
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
