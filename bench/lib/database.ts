/** Client and server RxDB databases for the benchmark: memory storage (one instance, shared by every bench database). */
import { createRxDatabase, type CollectionsOfDatabase, type RxCollection, type RxDatabase } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { todoSchema, type Todo } from './documents.js';

export type TodoDatabase = RxDatabase<{ todos: RxCollection<Todo> }>;

export const storage = getRxStorageMemory();
let counter = 0;

export async function openTodoDatabase(prefix: string): Promise<TodoDatabase> {
  const db = await createRxDatabase<{ todos: RxCollection<Todo> }>({
    name: `${prefix}${process.pid}x${(counter++).toString(36)}`,
    storage,
    multiInstance: false,
    eventReduce: true,
  });
  await db.addCollections({ todos: { schema: todoSchema } });
  return db;
}

/**
 * Closes the database and frees its data. RxDB's memory storage keeps the
 * state of closed instances in a process-wide map, and the websocket server
 * plugin keeps a replication handler per collection in a module-level map
 * that is never cleared; a long benchmark would otherwise carry every
 * earlier run's documents in its heap. So the documents are dropped too.
 */
export async function dropDatabase<Collections extends CollectionsOfDatabase>(db: RxDatabase<Collections>): Promise<void> {
  const changeBuffers = Object.values(db.collections).map(
    (collection) => (collection as unknown as { _changeEventBuffer?: { buffer: unknown[] } })._changeEventBuffer,
  );
  if (!db.closed) await db.close();
  // The handler cache keeps the collection, and with it the change events of its last writes.
  for (const changeBuffer of changeBuffers) if (changeBuffer) changeBuffer.buffer.length = 0;
  const prefix = `${db.name}--memory--`;
  for (const [key, internals] of [...storage.collectionStates]) {
    if (!key.startsWith(prefix)) continue;
    internals.documents.clear();
    internals.byIndex = {};
    internals.byIndexArray = [];
    storage.collectionStates.delete(key);
  }
}
