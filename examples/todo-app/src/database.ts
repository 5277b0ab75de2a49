/**
 * The app's data: an RxDB database on IndexedDB (through Dexie), one per
 * signed-in user and device, with one `todos` collection (photos as
 * attachments) synced through rxdb-offline-sync.
 */
import { addRxPlugin, createRxDatabase, type RxCollection, type RxDatabase, type RxJsonSchema } from 'rxdb';
import { RxDBAttachmentsPlugin } from 'rxdb/plugins/attachments';
import { getRxStorageDexie } from 'rxdb/plugins/storage-dexie';
import { RxDBOfflineSyncPlugin, createSyncPlugin, type ConflictResolver, type SyncApi } from 'rxdb-offline-sync';
import type { Notice } from './conflicts.js';

export interface Todo {
  id: string;
  title: string;
  done: boolean;
  createdAt: number;
  /** The list it is on: a user's name (private) or "shared". */
  list: string;
  /** Who created it; a private list holds only its owner's todos. */
  owner: string;
  /** The device that wrote it last, so that a conflict that drops its change can tell it. */
  editedBy: string;
  notice?: Notice;
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
    list: { type: 'string', maxLength: 64 },
    owner: { type: 'string', maxLength: 64 },
    editedBy: { type: 'string', maxLength: 64 },
    notice: {
      type: 'object',
      properties: { id: { type: 'string' }, for: { type: 'string' }, text: { type: 'string' } },
      required: ['id', 'for', 'text'],
    },
  },
  required: ['id', 'title', 'done', 'createdAt', 'list', 'owner', 'editedBy'],
  attachments: {},
};

export type TodoDatabase = RxDatabase<{ todos: RxCollection<Todo> }>;

export interface OpenedApp {
  db: TodoDatabase;
  sync: SyncApi;
}

addRxPlugin(RxDBOfflineSyncPlugin);
addRxPlugin(RxDBAttachmentsPlugin);

/**
 * Opens (or creates) the database and starts syncing with `serverUrl`.
 * `startOffline` keeps the app off the network from the first moment, so that
 * a reload while "offline" does not push anything.
 */
export async function openApp(options: {
  name: string;
  serverUrl: string;
  authToken: () => Promise<string | undefined>;
  startOffline: boolean;
  resolveConflict: ConflictResolver;
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
      authToken: options.authToken,
      collections: ['todos'],
      conflictResolution: { todos: options.resolveConflict },
      retry: { maxRetries: 10, retryDelay: 500, useExponentialBackoff: true },
      logging: { enabled: true, level: 'warn' },
    }),
  );
  if (options.startOffline) sync.disable();
  return { db, sync };
}
