/** `rxdb-offline-sync serve`: one HTTP port for socket.io sync, health, metrics and (optionally) a web app. */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { createLogger, type Logger } from '../shared/logger.js';
import { createHealthAndMetrics } from '../server/http.js';
import { createSyncServer, type SyncServer } from '../server/server.js';
import { MemorySyncStorage, PostgresSyncStorage, SqliteSyncStorage, type SyncStorage } from '../server/storage/index.js';
import type { StorageSpec } from './args.js';
import { createStaticHandler } from './static.js';

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
}

export interface RunningServer {
  /** Where a browser on this machine reaches the server. */
  url: string;
  port: number;
  syncServer: SyncServer;
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

async function connectRedis(url: string, logger: Logger) {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) client.on('error', (error: unknown) => logger.error({ err: error }, 'redis error'));
  await Promise.all([pub.connect(), sub.connect()]);
  return {
    adapter: createAdapter(pub, sub),
    close: async () => {
      await Promise.allSettled([pub.quit(), sub.quit()]);
    },
  };
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

export async function serve(options: ServeOptions): Promise<RunningServer> {
  const logging = { enabled: options.logLevel !== 'silent', level: options.logLevel === 'silent' ? 'info' : options.logLevel } as const;
  const logger = createLogger(logging, 'rxdb-offline-sync');
  const serveStatic = options.staticDir ? createStaticHandler(options.staticDir) : undefined;
  const storage = createStorage(options.storage);
  const cleanups: (() => Promise<unknown>)[] = [() => storage.close()];
  const cleanUp = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((error: unknown) => logger.warn({ err: error }, 'cleanup failed'));
  };

  try {
    const redis = options.redis ? await connectRedis(options.redis, logger) : undefined;
    if (redis) cleanups.push(redis.close);

    const httpServer = createServer();
    const syncServer = createSyncServer({
      httpServer,
      storage,
      logging,
      ...(redis ? { adapter: redis.adapter } : {}),
      ...(options.corsOrigin ? { socketOptions: { cors: { origin: options.corsOrigin } } } : {}),
      ...(options.authToken ? { authenticate: (_socket, token) => (token === options.authToken ? { token: 'shared' } : null) } : {}),
    });
    const endpoints = createHealthAndMetrics(syncServer);
    // socket.io wraps this listener when it attaches, so only its own paths bypass it.
    httpServer.on('request', (req, res) => {
      if (endpoints.handle(req, res) || serveStatic?.(req, res)) return;
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
    await new Promise<void>((resolve, reject) => {
      httpServer.once('error', reject);
      httpServer.listen(options.port, options.host, () => {
        httpServer.off('error', reject);
        resolve();
      });
    });

    const port = (httpServer.address() as AddressInfo).port;
    const shownHost = ['0.0.0.0', '::', ''].includes(options.host) ? 'localhost' : options.host.includes(':') ? `[${options.host}]` : options.host;
    let closing: Promise<void> | undefined;
    return {
      url: `http://${shownHost}:${port}`,
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
