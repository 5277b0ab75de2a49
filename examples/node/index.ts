/**
 * A sync server and a Node client in one file: `npm run example:node`.
 * In your app, import from 'rxdb-offline-sync' and 'rxdb-offline-sync/server'.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { addRxPlugin, createRxDatabase } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { RxDBOfflineSyncPlugin, createSyncPlugin } from '../../src/client/index.js';
import { createSyncServer, SqliteSyncStorage } from '../../src/server/index.js';

// Server: socket.io beside any Node http.Server, events stored in SQLite.
const httpServer = createServer();
const server = createSyncServer({ httpServer, storage: new SqliteSyncStorage({ path: ':memory:' }), logging: { level: 'warn' } });
await server.start();
await new Promise<void>((resolve) => httpServer.listen(Number(process.env.PORT ?? 3100), resolve));
const serverUrl = `http://localhost:${(httpServer.address() as AddressInfo).port}`;

// Client: an RxDB database whose `todos` collection syncs with the server.
addRxPlugin(RxDBOfflineSyncPlugin);
const db = await createRxDatabase({ name: 'node-example', storage: getRxStorageMemory() });
const { todos } = await db.addCollections({
  todos: {
    schema: {
      version: 0,
      primaryKey: 'id',
      type: 'object',
      properties: { id: { type: 'string', maxLength: 64 }, title: { type: 'string' }, done: { type: 'boolean' } },
      required: ['id', 'title', 'done'],
    },
  },
});
const sync = await db.addPlugin(createSyncPlugin({ serverUrl, collections: ['todos'], logging: { level: 'warn' } }));

await todos.insert({ id: 'first', title: 'Written in Node', done: false });
const result = await sync.syncNow();
console.log('synced:', result.syncedEvents, 'events | pending:', sync.getStatus().pendingEvents, '| stored on the server:', await server.getStorage().countEvents());

await db.close();
await server.stop();
httpServer.closeAllConnections();
httpServer.close();
