/**
 * The scopes scenario's server and clients: this project's server on a
 * given storage with `scopeFields` declared for assets, counting what it
 * sends (pull replies from its `pull` events, bytes from its TCP sockets),
 * and real clients (RxDB memory storage, the plugin) with or without a scope.
 */
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { addRxPlugin } from 'rxdb';
import { RxDBOfflineSyncPlugin, createSyncPlugin, type ScopeSelector, type SyncApi } from 'rxdb-offline-sync';
import { createSyncServer, type SyncStorage } from 'rxdb-offline-sync/server';
import { dropDatabase } from './database.js';
import type { AssetDatabase } from './scopes-data.js';

addRxPlugin(RxDBOfflineSyncPlugin);

const quiet = { enabled: false } as const;

/** What the server sent: pull replies (pages, documents in them, time in the handler) and bytes on its sockets. */
export interface Sent {
  pulls: number;
  documents: number;
  pullMs: number;
  /** The longest pull handler, which holds the server's event loop (and every other client) that long. */
  maxPullMs: number;
  bytesOut: number;
  bytesIn: number;
}

export interface ScopesServer {
  url: string;
  /** Everything sent so far (maxPullMs since the last reading); subtract two readings for a span. */
  sent(): Sent;
  stop(): Promise<void>;
}

export const difference = (after: Sent, before: Sent): Sent => ({
  pulls: after.pulls - before.pulls,
  documents: after.documents - before.documents,
  pullMs: after.pullMs - before.pullMs,
  maxPullMs: after.maxPullMs,
  bytesOut: after.bytesOut - before.bytesOut,
  bytesIn: after.bytesIn - before.bytesIn,
});

/** Starts the server on `storage` (already seeded) and resolves once it has indexed the scope fields. */
export async function startScopesServer(storage: SyncStorage): Promise<ScopesServer> {
  const httpServer: Server = createServer();
  const sockets = new Set<Socket>();
  httpServer.on('connection', (socket) => sockets.add(socket));
  const server = createSyncServer({ httpServer, storage, logging: quiet, scopeFields: { assets: ['crewId'] } });
  const pulls = { pulls: 0, documents: 0, pullMs: 0, maxPullMs: 0 };
  server.events.on('pull', ({ events, durationMs }) => {
    pulls.pulls++;
    pulls.documents += events;
    pulls.pullMs += durationMs;
    pulls.maxPullMs = Math.max(pulls.maxPullMs, durationMs);
  });
  await server.start();
  // A port of its own: two of these servers run at once.
  await new Promise<void>((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = httpServer.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    sent() {
      let bytesOut = 0;
      let bytesIn = 0;
      // A closed socket keeps its counts.
      for (const socket of sockets) {
        bytesOut += socket.bytesWritten;
        bytesIn += socket.bytesRead;
      }
      const reading = { ...pulls, bytesOut, bytesIn };
      pulls.maxPullMs = 0;
      return reading;
    },
    async stop() {
      await server.stop();
      httpServer.closeAllConnections();
      await new Promise<void>((resolve) => httpServer.close(() => resolve()));
    },
  };
}

export interface AssetClient {
  db: AssetDatabase;
  sync: SyncApi;
  count(): Promise<number>;
  close(): Promise<void>;
}

/**
 * How long a client waits for the server, raised from the plugin's defaults
 * (4.5 s without a ping, 20 s for an answer) for every client here alike: a
 * scoped pull that holds the server's event loop longer than that would
 * otherwise drop the connection and be asked again, and the sync would
 * measure the retries. Sent.maxPullMs shows how close a default client came.
 */
const PATIENCE = { heartbeatTimeout: 120_000, requestTimeout: 180_000 };

/**
 * Starts syncing assets in `scope` (null: everything) on `database`;
 * resolves once the first sync has finished. Timed by the caller.
 */
export async function startAssetSync(database: AssetDatabase, url: string, scope: ScopeSelector | null): Promise<AssetClient> {
  const sync = await database.addPlugin(
    createSyncPlugin({ serverUrl: url, collections: ['assets'], logging: quiet, syncInterval: 600_000, ...PATIENCE, ...(scope ? { scopes: { assets: scope } } : {}) }),
  );
  const result = await sync.syncNow();
  if (!result.success) throw result.error;
  return {
    db: database,
    sync,
    count: () => database.assets.count().exec(),
    close: () => dropDatabase(database),
  };
}

/** Changes the client's scope and resolves once the move has finished (the sync run it starts has ended). */
export async function changeScope(client: AssetClient, scope: ScopeSelector | null): Promise<void> {
  client.sync.setScope('assets', scope);
  const result = await client.sync.syncNow();
  if (!result.success) throw result.error;
}
