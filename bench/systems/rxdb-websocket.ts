/** The obvious alternative: RxDB's own replication-websocket plugin, an RxDB database on the server. */
import { createServer } from 'node:http';
import type { RxReplicationState } from 'rxdb/plugins/replication';
import { replicateWithWebsocketServer, startWebsocketServer } from 'rxdb/plugins/replication-websocket';
import { Counter } from '../lib/counter.js';
import { dropDatabase, openTodoDatabase } from '../lib/database.js';
import { listenOnLoopback } from '../lib/listen.js';
import type { Todo } from '../lib/documents.js';
import { WebSocket } from 'ws';
import type { BenchClient, BenchPusher, BenchServer, BenchSystem } from './types.js';

/** Documents per pull and push request; set by the runner (RxDB's own default is 100). */
export const rxdbOptions = { batchSize: 500 };

export const rxdbWebsocket: BenchSystem = {
  id: 'rxdb-ws',
  label: 'RxDB replication-websocket',
  async startServer(options = {}) {
    if (options.storage) throw new Error('RxDB replication-websocket keeps its server data in an RxDB database; it takes no SyncStorage');
    const serverDb = await openTodoDatabase('rxs');
    const httpServer = createServer();
    const port = await listenOnLoopback(httpServer);
    const wsServer = startWebsocketServer({ database: serverDb, server: httpServer, ...(options.compress ? { perMessageDeflate: { threshold: 1024 } } : {}) });
    const url = `ws://127.0.0.1:${port}`;
    const written = new Counter();
    const subscription = serverDb.todos.eventBulks$.subscribe((bulk) => written.add(bulk.events.length));
    let seeded = 0;

    const bench: BenchServer = {
      async seed(todos) {
        const before = written.value;
        const result = await serverDb.todos.bulkInsert(todos.map((todo) => ({ ...todo })));
        if (result.error.length > 0) throw new Error(`seeding the RxDB server failed for ${result.error.length} documents`);
        // Seeding is not a client write.
        seeded += written.value - before;
      },
      get written() {
        return written.value - seeded;
      },
      waitForWritten: (count) => written.reach(count + seeded),
      port,
      async openClient(options = {}): Promise<BenchClient> {
        const clientUrl = options.port ? `ws://127.0.0.1:${options.port}` : url;
        const db = await openTodoDatabase('rxc');
        let replication: RxReplicationState<Todo, unknown> | undefined;
        return {
          todos: db.todos,
          async startSync() {
            replication = await replicateWithWebsocketServer<Todo, unknown>({
              collection: db.todos,
              url: clientUrl,
              replicationIdentifier: 'bench',
              live: true,
              batchSize: rxdbOptions.batchSize,
            });
            let failure: unknown;
            replication.error$.subscribe((error) => (failure ??= error));
            await replication.awaitInitialReplication();
            if (failure) throw failure;
          },
          async settled() {
            await replication!.awaitInSync();
          },
          async close() {
            await replication?.cancel();
            await dropDatabase(db);
          },
        };
      },
      async openPusher(): Promise<BenchPusher> {
        // The replication-websocket protocol by hand: a masterWrite request answered with the conflicts.
        const socket = new WebSocket(url);
        await new Promise<void>((resolve, reject) => {
          socket.once('open', () => resolve());
          socket.once('error', reject);
        });
        const waiting = new Map<string, (result: unknown[]) => void>();
        socket.on('message', (raw) => {
          const message = JSON.parse(String(raw)) as { id: string; result: unknown[] };
          waiting.get(message.id)?.(message.result);
          waiting.delete(message.id);
        });
        let counter = 0;
        return {
          async push(todos) {
            const id = `push-${counter++}`;
            const rows = todos.map((todo) => ({ newDocumentState: { ...todo, _deleted: false } }));
            const answered = new Promise<unknown[]>((resolve) => waiting.set(id, resolve));
            socket.send(JSON.stringify({ id, collection: 'todos', method: 'masterWrite', params: [rows] }));
            const conflicts = await answered;
            if (conflicts.length > 0) throw new Error(`${conflicts.length} pushed documents conflicted`);
          },
          close: () => socket.close(),
        };
      },
      async stop() {
        subscription.unsubscribe();
        await wsServer.close();
        httpServer.closeAllConnections();
        await new Promise<void>((resolve) => httpServer.close(() => resolve()));
        await dropDatabase(serverDb);
      },
    };
    return bench;
  },
};
