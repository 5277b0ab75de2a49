/** `rxdb-offline-sync serve`: one HTTP port for socket.io sync, health, metrics and (optionally) a web app. */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type * as ClusterAdapter from '@socket.io/cluster-adapter';
import type * as RedisAdapter from '@socket.io/redis-adapter';
import type * as Sticky from '@socket.io/sticky';
import type * as Redis from 'redis';
import type { Logger } from '../shared/logger.js';
import { createLogger } from '../server/logger.js';
import { requireOptional } from '../server/optional.js';
import { createHealthAndMetrics } from '../server/http.js';
import { createSyncServer, type SyncServer } from '../server/server.js';
import type { Authenticate, Authorize } from '../server/options.js';
import { FileBlobStore, MemoryBlobStore, PostgresBlobStore, type BlobStore } from '../server/blobs/index.js';
import { MemorySyncStorage, PostgresSyncStorage, SqliteSyncStorage, type SyncStorage } from '../server/storage/index.js';
import { describeStorage, type StorageSpec } from './args.js';
import { clusterMetrics, reportToPrimary } from './cluster.js';
import { createStaticHandler, type RequestHandler } from './static.js';

export type CliLogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface ServeOptions {
  port: number;
  host: string;
  storage: StorageSpec;
  redis?: string;
  logLevel: CliLogLevel;
  /** A built web app to serve on the same port. */
  staticDir?: string;
  corsOrigin?: string | string[];
  /** When set, only clients presenting this token may connect. */
  authToken?: string;
  /** The largest attachment taken, in bytes (the sync server's default when absent). */
  maxAttachmentBytes?: number;
  /** The bytes of attachments each user may store; no quota when absent. */
  attachmentQuota?: number;
  /** In code only (no flag): the sync server's `authenticate`, in place of `authToken`. */
  authenticate?: Authenticate<unknown>;
  /** In code only (no flag): the sync server's `authorize`. */
  authorize?: Authorize<unknown>;
  /** In code only (no flag): answers HTTP requests before the web app does; true when it took the request. */
  handleRequest?: RequestHandler;
  /**
   * This process is a worker of `serve --workers`: the primary owns the port
   * and hands it connections, and live events reach the other workers
   * through the primary (or Redis, when given).
   */
  clusterWorker?: boolean;
}

export interface RunningServer {
  /** Where a browser on this machine reaches the server. */
  url: string;
  port: number;
  /** Absent in the primary process of `serve --workers`, which only hands connections to its workers. */
  syncServer?: SyncServer;
  httpServer: HttpServer;
  logger: Logger;
  /** Stops accepting, disconnects clients, closes storage and Redis. */
  close(): Promise<void>;
}

export function createStorage(spec: StorageSpec): SyncStorage {
  switch (spec.kind) {
    case 'memory':
      return new MemorySyncStorage();
    case 'sqlite':
      return new SqliteSyncStorage({ path: spec.path });
    case 'postgres':
      return new PostgresSyncStorage({ connectionString: spec.connectionString });
  }
}

/**
 * Where attachment content goes beside each storage: files in a folder
 * beside the SQLite database (the database stays small and its WAL free of
 * large writes; every worker of `serve --workers` shares the folder), rows
 * in the same PostgreSQL database (every instance reaches it, with no disk
 * to share), memory beside memory.
 */
export function createBlobStore(spec: StorageSpec): BlobStore {
  switch (spec.kind) {
    case 'memory':
      return new MemoryBlobStore();
    case 'sqlite':
      // An in-memory database keeps its attachments in memory too.
      return spec.path === ':memory:' ? new MemoryBlobStore() : new FileBlobStore({ directory: `${spec.path}.attachments` });
    case 'postgres':
      return new PostgresBlobStore({ connectionString: spec.connectionString });
  }
}

/** Opens storage before anything listens: a database that cannot be reached at start is fatal, with one line that names it. */
export async function openStorage(storage: SyncStorage, spec: StorageSpec): Promise<void> {
  try {
    await storage.init();
  } catch (error) {
    throw new Error(`cannot open storage ${describeStorage(spec)}: ${messageOf(error)}`, { cause: error });
  }
}

/**
 * A Redis client that gives up on its first connection attempt (so an
 * unreachable Redis at start is fatal) but, once connected, retries for as
 * long as an outage lasts, logging its start and its end once each.
 */
function redisClient(url: string, role: 'publisher' | 'subscriber', logger: Logger) {
  let connectedOnce = false;
  let down = false;
  const { createClient } = requireOptional<typeof Redis>('redis', 'The --redis option');
  const client = createClient({
    url,
    socket: {
      // Returning the cause ends connect() with it; a number is the delay before the next attempt.
      reconnectStrategy: (retries, cause) => (connectedOnce ? Math.min(2 ** retries * 50, 2000) + Math.floor(Math.random() * 200) : cause),
    },
  });
  client.on('error', (error: unknown) => {
    // Before the first connection, connect() reports the failure; afterwards every retry fails alike until Redis is back.
    if (!connectedOnce || down) return;
    down = true;
    logger.error({ err: error, role }, 'redis unreachable; retrying');
  });
  client.on('ready', () => {
    if (down) logger.info({ role }, 'redis reachable again');
    connectedOnce = true;
    down = false;
  });
  return client;
}

/**
 * How long connecting to Redis at start may take. The client's own connect
 * timeout (5 s) covers only TCP; this also ends the wait on a listener that
 * accepts and never answers, such as a port forward with nothing behind it.
 */
const REDIS_START_TIMEOUT_MS = 10_000;

export async function connectRedis(url: string, logger: Logger) {
  const { createAdapter } = requireOptional<typeof RedisAdapter>('@socket.io/redis-adapter', 'The --redis option');
  const pub = redisClient(url, 'publisher', logger);
  const sub = redisClient(url, 'subscriber', logger);
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), REDIS_START_TIMEOUT_MS);
  });
  const results = await Promise.race([Promise.allSettled([pub.connect(), sub.connect()]), timedOut]);
  clearTimeout(timer);
  const failure = results ? results.find((result) => result.status === 'rejected')?.reason : new Error(`no answer within ${REDIS_START_TIMEOUT_MS / 1000} s`);
  if (failure !== undefined) {
    for (const client of [pub, sub]) if (client.isOpen) client.destroy();
    throw new Error(`cannot connect to Redis at ${new URL(url).host}: ${messageOf(failure)}`, { cause: failure });
  }
  return {
    adapter: createAdapter(withoutUnhandledRejections(pub), withoutUnhandledRejections(sub)),
    // QUIT waits for Redis to answer, which during an outage it never does.
    close: async () => {
      await Promise.allSettled([pub, sub].map((client) => (client.isReady ? client.quit() : client.destroy())));
    },
  };
}

/**
 * The Redis adapter publishes and subscribes without awaiting the command. A
 * command in flight when Redis goes away then rejects with nobody listening,
 * and an unhandled rejection ends the process: one outage would stop every
 * device's sync. The outage is logged by the client's 'error' listener; a
 * live event lost with it reaches other instances' devices through their
 * gap checks and next pull. Awaiting callers still see the rejection.
 */
function withoutUnhandledRejections<Client extends object>(client: Client): Client {
  const commands = ['publish', 'sPublish', 'subscribe', 'pSubscribe', 'sSubscribe', 'unsubscribe', 'pUnsubscribe', 'sUnsubscribe'];
  for (const name of commands) {
    const command = (client as Record<string, unknown>)[name];
    if (typeof command !== 'function') continue;
    Object.defineProperty(client, name, {
      configurable: true,
      value: (...args: unknown[]): unknown => {
        const result: unknown = Reflect.apply(command, client, args);
        if (result instanceof Promise) result.catch(() => undefined);
        return result;
      },
    });
  }
  return client;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function closeHttp(httpServer: HttpServer): Promise<void> {
  if (!httpServer.listening) return Promise.resolve();
  return new Promise<void>((resolve) => {
    httpServer.close(() => resolve());
    httpServer.closeIdleConnections();
    // Browsers keep connections open; give in-flight requests a moment, then cut.
    setTimeout(() => httpServer.closeAllConnections(), 2000).unref();
  });
}

export function loggingFor(level: CliLogLevel) {
  return { enabled: level !== 'silent', level: level === 'silent' ? 'info' : level } as const;
}

/** Where a browser on this machine reaches a server listening on `host`. */
export function shownUrl(host: string, port: number): string {
  const shownHost = ['0.0.0.0', '::', ''].includes(host) ? 'localhost' : host.includes(':') ? `[${host}]` : host;
  return `http://${shownHost}:${port}`;
}

export async function serve(options: ServeOptions): Promise<RunningServer> {
  const logging = loggingFor(options.logLevel);
  const logger = createLogger(logging, 'rxdb-offline-sync');
  const serveStatic = options.staticDir ? createStaticHandler(options.staticDir) : undefined;
  const storage = createStorage(options.storage);
  const blobs = createBlobStore(options.storage);
  const cleanups: (() => Promise<unknown>)[] = [() => storage.close(), () => blobs.close()];
  const cleanUp = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((error: unknown) => logger.warn({ err: error }, 'cleanup failed'));
  };

  try {
    await openStorage(storage, options.storage);
    const redis = options.redis ? await connectRedis(options.redis, logger) : undefined;
    if (redis) cleanups.push(redis.close);

    const httpServer = createServer();
    const syncServer = createSyncServer({
      httpServer,
      storage,
      blobs,
      logging,
      ...(redis ? { adapter: redis.adapter } : options.clusterWorker ? { adapter: requireOptional<typeof ClusterAdapter>('@socket.io/cluster-adapter', 'serve --workers').createAdapter() } : {}),
      ...(options.corsOrigin ? { socketOptions: { cors: { origin: options.corsOrigin } } } : {}),
      ...(options.authenticate
        ? { authenticate: options.authenticate }
        : options.authToken
          ? { authenticate: (_socket, token) => (token === options.authToken ? { token: 'shared' } : null) }
          : {}),
      ...(options.authorize ? { authorize: options.authorize } : {}),
      ...(options.maxAttachmentBytes !== undefined ? { maxAttachmentBytes: options.maxAttachmentBytes } : {}),
      ...(options.attachmentQuota !== undefined ? { attachmentQuota: () => options.attachmentQuota } : {}),
    });
    const endpoints = createHealthAndMetrics(syncServer, options.clusterWorker ? { metricsPath: false } : {});
    const metricsOfCluster = options.clusterWorker ? clusterMetrics(endpoints.metrics.registry) : undefined;
    // socket.io wraps this listener when it attaches, so only its own paths bypass it.
    httpServer.on('request', (req, res) => {
      if (metricsOfCluster && req.method === 'GET' && new URL(req.url ?? '/', 'http://localhost').pathname === '/metrics') {
        metricsOfCluster().then(
          (body) => res.writeHead(200, { 'content-type': endpoints.metrics.contentType, 'cache-control': 'no-store' }).end(body),
          (error: unknown) => res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`${messageOf(error)}\n`),
        );
        return;
      }
      if (endpoints.handle(req, res) || options.handleRequest?.(req, res) || serveStatic?.(req, res)) return;
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('Not Found\n');
    });
    cleanups.push(async () => endpoints.close());

    await syncServer.start();
    // Clients first (stop() disconnects them), then the HTTP server, which waits for its open connections.
    cleanups.push(async () => {
      await syncServer.stop();
      await closeHttp(httpServer);
    });
    let port = options.port;
    if (options.clusterWorker) {
      // The primary listens; connections arrive over IPC.
      const { setupWorker } = requireOptional<typeof Sticky>('@socket.io/sticky', 'serve --workers');
      setupWorker(syncServer.getIo() as Parameters<typeof setupWorker>[0]);
      reportToPrimary({ type: 'rxos:ready' });
    } else {
      await new Promise<void>((resolve, reject) => {
        httpServer.once('error', reject);
        httpServer.listen(options.port, options.host, () => {
          httpServer.off('error', reject);
          resolve();
        });
      });
      port = (httpServer.address() as AddressInfo).port;
    }

    let closing: Promise<void> | undefined;
    return {
      url: shownUrl(options.host, port),
      port,
      syncServer: syncServer as SyncServer,
      httpServer,
      logger,
      close: () => (closing ??= cleanUp()),
    };
  } catch (error) {
    await cleanUp();
    throw error;
  }
}
