/**
 * The app's data: an RxDB database on IndexedDB (through Dexie) with one
 * `todos` collection, synced through rxdb-offline-sync.
 */
import { addRxPlugin, createRxDatabase, type RxCollection, type RxDatabase, type RxJsonSchema } from 'rxdb';
import { getRxStorageDexie } from 'rxdb/plugins/storage-dexie';
import { RxDBOfflineSyncPlugin, createSyncPlugin, lastWriteWins, type Conflict, type SyncApi } from 'rxdb-offline-sync';

export interface Todo {
  id: string;
  title: string;
  done: boolean;
  createdAt: number;
}

const todoSchema: RxJsonSchema<Todo> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 64 },
    title: { type: 'string', maxLength: 200 },
    done: { type: 'boolean' },
    createdAt: { type: 'number', minimum: 0, maximum: 1e15, multipleOf: 1 },
  },
  required: ['id', 'title', 'done', 'createdAt'],
};

export type TodoDatabase = RxDatabase<{ todos: RxCollection<Todo> }>;

export interface ResolvedConflict {
  title: string;
  winner: 'this device' | 'the server';
}

export interface OpenedApp {
  db: TodoDatabase;
  sync: SyncApi;
}

addRxPlugin(RxDBOfflineSyncPlugin);

/**
 * Opens (or creates) the database and starts syncing with `serverUrl`.
 * `startOffline` keeps the app off the network from the first moment, so that
 * a reload while "offline" does not push anything.
 */
export async function openApp(options: {
  name: string;
  serverUrl: string;
  startOffline: boolean;
  onConflictResolved: (conflict: ResolvedConflict) => void;
}): Promise<OpenedApp> {
  const db: TodoDatabase = await createRxDatabase({
    name: options.name,
    storage: getRxStorageDexie(),
    // Tabs of one browser share the database; one of them (the leader) syncs for all.
    multiInstance: true,
  });
  await db.addCollections({ todos: { schema: todoSchema } });

  const sync = await db.addPlugin(
    createSyncPlugin({
      serverUrl: options.serverUrl,
      collections: ['todos'],
      // Last write wins (by hybrid logical clock), as the default does, but tell the UI about it.
      conflictResolution: (conflict: Conflict) => {
        const resolution = lastWriteWins(conflict);
        const winner = resolution.action === 'keep-local' || !conflict.remote ? conflict.local : conflict.remote;
        const title = String(winner.data.title ?? conflict.local.data.title ?? conflict.documentId);
        options.onConflictResolved({ title, winner: winner === conflict.local ? 'this device' : 'the server' });
        return winner.deleted ? null : winner.data;
      },
      retry: { maxRetries: 10, retryDelay: 500, useExponentialBackoff: true },
      logging: { enabled: true, level: 'warn' },
    }),
  );
  if (options.startOffline) sync.disable();
  return { db, sync };
}
