/**
 * The scale scenario's sync server, run as a child process of its own
 * (scenarios/scale.ts forks it): its event loop, CPU and memory are the
 * server's alone, and it can be killed with SIGKILL and started again on the
 * same SQLite file and port. The built package (dist/), configured as a
 * deployment for 10,000 devices would be (SCALE_SERVER_OPTIONS in
 * scale-socket.ts); its log
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
import { SCALE_SERVER_OPTIONS, clock } from './scale-socket.js';

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
      /** The longest stalls since the last reset, as [when (shared clock), how long in ms, when in ms since the process started], longest first. */
      stalls: [number, number, number][];
    };

export type ScaleServerRequest = { type: 'stats'; id: number; reset?: boolean } | { type: 'exit' };


const SAMPLE_MS = 50;
const STALL_TICK_MS = 10;
const STALL_MIN_MS = 100;
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
  // When the longest stalls happened, to find them in a CPU profile: a timer that should tick every STALL_TICK_MS.
  let stalls: [number, number, number][] = [];
  let ticked = clock();
  const ticker = setInterval(() => {
    const now = clock();
    const late = now - ticked - STALL_TICK_MS;
    ticked = now;
    if (late < STALL_MIN_MS) return;
    stalls.push([now - late - STALL_TICK_MS, late, performance.now() - late - STALL_TICK_MS]);
    stalls.sort((a, b) => b[1] - a[1]);
    stalls.length = Math.min(stalls.length, 5);
  }, STALL_TICK_MS);
  let cpuSince = process.cpuUsage();
  let wallSince = clock();

  process.on('message', (request: ScaleServerRequest) => {
    if (request.type === 'exit') {
      clearInterval(sampler);
      clearInterval(ticker);
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
    void storage.getLatestSequence().catch(() => Number.NaN).then((latestSeq) => {
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
        stalls,
      });
      if (request.reset) {
        stalls = [];
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
    ticked = clock();
    stalls = [];
    send({ type: 'ready', port: (httpServer.address() as AddressInfo).port, listeningAt: clock(), startedAt });
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
