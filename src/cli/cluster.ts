/**
 * `serve --workers N`: N server processes behind one port, so that one
 * machine's cores all serve sync. The primary process owns the port and
 * hands each connection to a worker (@socket.io/sticky, so that the requests
 * of one long-polling session all reach the worker that holds it); live
 * events cross workers through socket.io's cluster adapter over the primary,
 * or through Redis when `--redis` is given. Workers share one database:
 * SQLite in WAL mode (writes are serialized by SQLite's lock, so sequences
 * still commit in order) or PostgreSQL.
 *
 * A worker that dies is replaced; its clients reconnect to the others. A
 * worker that fails before it ever served is fatal: the same cause would
 * fail its replacement too. /metrics answers for the whole cluster.
 */
import cluster, { type Worker } from 'node:cluster';
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type * as ClusterAdapter from '@socket.io/cluster-adapter';
import type * as Sticky from '@socket.io/sticky';
import { AggregatorRegistry, type Registry } from 'prom-client';
import { createLogger } from '../server/logger.js';
import { requireOptional } from '../server/optional.js';
import { connectRedis, createStorage, loggingFor, openStorage, shownUrl, type RunningServer, type ServeOptions } from './serve.js';

/** Messages between the primary and its workers (prefixed, as IPC is shared with sticky and the adapter). */
type WorkerMessage = { type: 'rxos:ready' } | { type: 'rxos:failed'; message: string } | { type: 'rxos:metrics'; id: number };
type PrimaryMessage = { type: 'rxos:metrics'; id: number; body?: string; error?: string };

/** A replaced worker's successor waits this long, so a worker that dies at once cannot spin the CPU. */
const RESPAWN_DELAY_MS = 1000;
/** The longest wait before trying again a replacement that keeps failing to start. */
const MAX_RESPAWN_DELAY_MS = 30_000;
/** How long workers get to close their connections on shutdown before they are killed. */
const STOP_TIMEOUT_MS = 10_000;
const METRICS_TIMEOUT_MS = 5000;

export function isClusterWorker(): boolean {
  return cluster.isWorker;
}

/**
 * Runs the primary: checks storage and Redis once (a bad address fails here,
 * with one line, before any worker starts), listens, and keeps `workers`
 * workers running until close().
 */
export async function servePrimary(options: ServeOptions, workers: number): Promise<RunningServer> {
  const logger = createLogger(loggingFor(options.logLevel), 'rxdb-offline-sync');
  const { setupMaster } = requireOptional<typeof Sticky>('@socket.io/sticky', 'serve --workers');
  // Creates the schema once, before workers race to; and fails fast on a database that cannot be reached.
  const storage = createStorage(options.storage);
  try {
    await openStorage(storage, options.storage);
  } finally {
    await storage.close();
  }
  if (options.redis) await (await connectRedis(options.redis, logger)).close();
  else requireOptional<typeof ClusterAdapter>('@socket.io/cluster-adapter', 'serve --workers').setupPrimary();

  // Buffers cross IPC as Buffers (a connection's first bytes, the adapter's packets), not as JSON arrays.
  cluster.setupPrimary({ serialization: 'advanced' });
  const httpServer = createServer();
  // The primary keeps the connections whose requests come in several chunks (it relays them): closed on stop.
  const connections = new Set<Socket>();
  httpServer.on('connection', (socket: Socket) => {
    connections.add(socket);
    socket.once('close', () => connections.delete(socket));
  });
  setupMaster(httpServer, { loadBalancingMethod: 'least-connection' });
  // After sticky's own listener, which reads each connection's first chunk: see handOverUnread.
  httpServer.on('connection', handOverUnread);
  const aggregator = new AggregatorRegistry();
  let stopping = false;
  let failure: ((error: Error) => void) | undefined;
  const everReady = new Set<number>();
  /** Every first worker was ready once: from then on, a worker that exits is replaced. */
  let started = false;
  /** Replacements in a row that exited before they were ready. */
  let failedStarts = 0;

  const onMessage = (worker: Worker, message: WorkerMessage) => {
    if (message?.type === 'rxos:ready') {
      everReady.add(worker.id);
      failedStarts = 0;
      takeConnections(worker);
    } else if (message?.type === 'rxos:failed') {
      failure?.(new Error(message.message));
      // Its IPC channel would keep it alive, neither serving nor replaced: it ends, and is replaced (see spawn).
      if (started) worker.kill();
    }
    else if (message?.type === 'rxos:metrics') {
      const reply = (answer: PrimaryMessage) => {
        if (worker.isConnected()) worker.send(answer);
      };
      aggregator.clusterMetrics().then(
        (body) => reply({ type: 'rxos:metrics', id: message.id, body }),
        (error: unknown) => reply({ type: 'rxos:metrics', id: message.id, error: error instanceof Error ? error.message : String(error) }),
      );
    }
  };
  const spawn = () => {
    const worker = cluster.fork();
    holdConnections(worker);
    keepPrimaryUp(worker, logger);
    worker.on('message', (message: WorkerMessage) => onMessage(worker, message));
    worker.on('exit', (code, signal) => {
      if (stopping) return;
      const whileStarting = !everReady.has(worker.id);
      // At start, a worker that cannot start is the server failing to start (a bad path, a database down).
      if (whileStarting && !started) {
        failure?.(new Error(`a worker exited while starting (${signal ?? `code ${code}`})`));
        return;
      }
      // Later, a replacement that cannot start yet (its database away for a while) is tried again, ever
      // more slowly: the cluster does not shrink for good, nor fork without pause.
      failedStarts = whileStarting ? failedStarts + 1 : 0;
      const delay = Math.min(MAX_RESPAWN_DELAY_MS, RESPAWN_DELAY_MS * 2 ** failedStarts);
      logger.error({ worker: worker.id, code, signal, retryInMs: delay }, whileStarting ? 'a replacement worker exited while starting; starting another' : 'worker exited; starting another');
      setTimeout(() => {
        if (!stopping) spawn();
      }, delay).unref();
    });
    return worker;
  };

  const stop = async () => {
    stopping = true;
    const running = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined && !worker.isDead());
    await Promise.all(
      running.map(
        (worker) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => worker.kill('SIGKILL'), STOP_TIMEOUT_MS);
            worker.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            worker.kill('SIGTERM');
          }),
      ),
    );
    const closed = new Promise<void>((resolve) => (httpServer.listening ? httpServer.close(() => resolve()) : resolve()));
    for (const socket of connections) socket.destroy();
    await closed;
  };

  try {
    await new Promise<void>((resolve, reject) => {
      failure = reject;
      httpServer.once('error', reject);
      httpServer.listen(options.port, options.host, () => {
        httpServer.off('error', reject);
        for (let i = 0; i < workers; i++) spawn();
        const check = setInterval(() => {
          if (everReady.size >= workers) {
            clearInterval(check);
            resolve();
          }
        }, 20);
        httpServer.once('close', () => clearInterval(check));
      });
    });
  } catch (error) {
    await stop();
    throw error;
  }
  started = true;
  failure = (error) => logger.error({ err: error }, 'worker failed');

  const port = (httpServer.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    url: shownUrl(options.host, port),
    port,
    httpServer,
    logger,
    close: () => (closing ??= stop()),
  };
}

/**
 * @socket.io/sticky gives each new connection (and each request whose
 * session is gone) to the worker with the fewest clients, by the
 * `clientsCount` it keeps on each worker: a worker just forked, with none,
 * got them all. But a worker can take a connection only once its server is
 * set up (setupWorker, after its modules load and its storage opens: a
 * second or more), and one handed to it before is lost without a word: a
 * WebSocket client waits out its connect timeout (10 s), a polling client's
 * request hangs, and each retry while the worker starts is lost again. So
 * after a worker was killed, its clients came back only 10–20 s later.
 * Until it says it is ready, a worker counts as full; were every worker
 * starting, sticky would still pick one.
 */
type StickyWorker = Worker & { clientsCount?: number };

function holdConnections(worker: StickyWorker): void {
  worker.clientsCount = Number.POSITIVE_INFINITY;
}

/** Ready: counted from none, as no connection reached it before (sticky counts those the worker reports). */
function takeConnections(worker: StickyWorker): void {
  if (worker.clientsCount === Number.POSITIVE_INFINITY) worker.clientsCount = 0;
}

/**
 * A worker that dies closes its IPC channel a moment before node reports
 * its exit, and stays in `cluster.workers` meanwhile. A message sent to it
 * then fails; sent without a callback, as @socket.io/sticky sends the abort
 * of a relayed request whose client went away, the failure is an 'error'
 * event on the worker, and with no listener it crashed the primary: every
 * worker and every connection gone because one worker died. The message
 * was for a process that is gone; it is only logged.
 */
export function keepPrimaryUp(worker: Worker, logger: { warn(fields: object, message: string): void }): void {
  worker.on('error', (error: Error) => logger.warn({ worker: worker.id, err: error }, 'a message to a worker was not delivered'));
}

/**
 * Sticky reads a connection's first chunk, to pick its worker, and hands
 * the socket itself to the worker (unless the request may come in several
 * chunks, a body, which the primary relays). But the primary's copy of the
 * socket goes on reading until the worker acknowledges the handle, and what
 * it reads meanwhile is dropped (nodejs/node#8353). A WebSocket client sends
 * its first frame, socket.io's CONNECT, as soon as the worker answers the
 * upgrade; a primary slow to take the acknowledgement (busy forking a
 * replacement, say) read and dropped it, and the client, its connection
 * open and pinged, waited for an answer for good: socket.io-client has no
 * timeout for it. So the primary stops reading a socket it hands over once
 * it has its first chunk: the rest is the worker's.
 */
function handOverUnread(socket: Socket): void {
  socket.prependOnceListener('data', (chunk: Buffer) => {
    // Sticky's own test: a request that may come in several chunks stays with the primary, which relays them.
    const header = chunk.subarray(0, chunk.indexOf('\r\n\r\n')).toString().toLowerCase();
    if (header.includes('content-length:') || header.includes('transfer-encoding:')) return;
    const handle = (socket as Socket & { _handle?: { reading?: boolean; readStop(): number } | null })._handle;
    if (!handle?.reading) return;
    handle.reading = false;
    handle.readStop();
  });
}

/** In a worker: tells the primary it serves, or why it could not start. */
export function reportToPrimary(message: WorkerMessage): void {
  process.send?.(message);
}

/** In a worker: the metrics of every worker, summed by the primary (prom-client's AggregatorRegistry). */
export function clusterMetrics(registry: Registry): () => Promise<string> {
  AggregatorRegistry.setRegistries([registry]);
  // Constructing one is what makes prom-client answer the primary's requests in this process.
  new AggregatorRegistry();
  let nextId = 0;
  const waiting = new Map<number, { resolve: (body: string) => void; reject: (error: Error) => void }>();
  process.on('message', (message: PrimaryMessage) => {
    if (message?.type !== 'rxos:metrics') return;
    const request = waiting.get(message.id);
    waiting.delete(message.id);
    if (message.body !== undefined) request?.resolve(message.body);
    else request?.reject(new Error(message.error ?? 'no metrics'));
  });
  return () =>
    new Promise<string>((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error(`the primary process did not answer within ${METRICS_TIMEOUT_MS} ms`));
      }, METRICS_TIMEOUT_MS);
      waiting.set(id, {
        resolve: (body) => (clearTimeout(timer), resolve(body)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      });
      reportToPrimary({ type: 'rxos:metrics', id });
    });
}
