/** This project: the socket.io sync server and the RxDB client plugin. */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { addRxPlugin } from 'rxdb';
import { RxDBOfflineSyncPlugin, createSyncPlugin, type SyncApi } from 'rxdb-offline-sync';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type PushReply, type SyncEvent } from 'rxdb-offline-sync/protocol';
import { createSyncServer, type IncomingEvent } from 'rxdb-offline-sync/server';
// Only to build the bare pushers' prepared events, outside every timed span.
import { formatHlc } from '../../src/shared/hlc.js';
import { Counter } from '../lib/counter.js';
import { dropDatabase, openTodoDatabase } from '../lib/database.js';
import { connectOwnSocket, listenOnLoopback } from '../lib/listen.js';
import type { BenchClient, BenchPuller, BenchPusher, BenchServer, BenchSystem } from './types.js';

addRxPlugin(RxDBOfflineSyncPlugin);

const quiet = { enabled: false } as const;

/** Client options the runner may set (`--batch-size`); undefined keeps the plugin's default. */
export const offlineSyncOptions: { batchSize?: number } = {};
const SEED_CHUNK = 5000;
const SEED_WRITERS = 8;

export const offlineSync: BenchSystem = {
  id: 'offline-sync',
  label: 'rxdb-offline-sync',
  async startServer(options = {}) {
    const httpServer = createServer();
    const server = createSyncServer({
      httpServer,
      logging: quiet,
      ...(options.storage ? { storage: options.storage } : {}),
      // The README's setting for slow links; socket.io-client offers the extension on its own.
      ...(options.compress ? { socketOptions: { perMessageDeflate: { threshold: 1024 } } } : {}),
    });
    await server.start();
    const port = await listenOnLoopback(httpServer);
    const url = `http://127.0.0.1:${port}`;
    const written = new Counter();
    server.events.on('push', ({ accepted }) => written.add(accepted));

    const bench: BenchServer = {
      async seed(todos) {
        const millis = Date.now();
        // Written by a few clients with UUIDs for ids, as the plugin makes them, so that each event's
        // author and clock weigh on the wire what they weigh in real use.
        const writers = Array.from({ length: SEED_WRITERS }, () => randomUUID());
        for (let start = 0; start < todos.length; start += SEED_CHUNK) {
          const events: IncomingEvent[] = todos.slice(start, start + SEED_CHUNK).map((todo, i) => {
            const writer = writers[(start + i) % SEED_WRITERS]!;
            return {
              id: randomUUID(),
              collection: 'todos',
              documentId: todo.id,
              op: 'insert',
              data: { ...todo },
              baseEventId: null,
              hlc: formatHlc({ millis, counter: start + i, node: writer }),
              clientId: writer,
            };
          });
          await server.getStorage().saveEvents(events);
        }
      },
      get written() {
        return written.value;
      },
      waitForWritten: (count) => written.reach(count),
      port,
      async openClient(options = {}): Promise<BenchClient> {
        const serverUrl = options.port ? `http://127.0.0.1:${options.port}` : url;
        const db = await openTodoDatabase('os');
        let sync: SyncApi | undefined;
        return {
          todos: db.todos,
          async startSync() {
            sync = await db.addPlugin(createSyncPlugin({ serverUrl, collections: ['todos'], logging: quiet, ...offlineSyncOptions }));
            const result = await sync.syncNow();
            if (!result.success) throw result.error;
          },
          async settled() {
            // A sync run ends idle: nothing pending, acknowledgements folded.
            const result = await sync!.syncNow();
            if (!result.success || sync!.getStatus().pendingEvents > 0) throw result.error ?? new Error('events still pending');
          },
          close: () => dropDatabase(db),
        };
      },
      async openPuller(): Promise<BenchPuller> {
        const socket = await bareSocket(url, `puller-${randomUUID()}`);
        return {
          async pullAll(limit) {
            let checkpoint = 0;
            let received = 0;
            for (;;) {
              const reply = (await socket.emitWithAck(MESSAGE.pull, { checkpoint, collections: ['todos'], limit })) as
                | { ok: true; events: unknown[]; checkpoint: number; hasMore: boolean }
                | { ok: false; error: { message: string } };
              if (!reply.ok) throw new Error(`pull refused: ${reply.error.message}`);
              received += reply.events.length;
              checkpoint = reply.checkpoint;
              if (!reply.hasMore) return received;
            }
          },
          close: () => void socket.close(),
        };
      },
      async openPusher(): Promise<BenchPusher> {
        const clientId = `pusher-${randomUUID()}`;
        const socket = await bareSocket(url, clientId);
        let counter = 0;
        return {
          async push(todos) {
            const millis = Date.now();
            // As the plugin pushes them in the current protocol: rows, the clock without this client's id.
            const events: SyncEvent[] = todos.map((todo) => ({
              id: randomUUID(),
              collection: 'todos',
              documentId: todo.id,
              op: 'insert',
              data: { ...todo },
              baseEventId: null,
              hlc: formatHlc({ millis, counter: counter++, node: clientId }),
            }));
            const reply = (await socket.emitWithAck(MESSAGE.push, toPushRows(events, clientId))) as { ok: true } & PushReply | { ok: false; error: { message: string } };
            if (!reply.ok) throw new Error(`push refused: ${reply.error.message}`);
            // Each stored event is answered with its sequence, anything else names what stopped it.
            const refused = reply.results.filter((result) => typeof result !== 'number');
            if (refused.length > 0) throw new Error(`${refused.length} pushed events were not accepted (first: ${refused[0]!.status})`);
          },
          close: () => void socket.close(),
        };
      },
      async stop() {
        await server.stop();
        httpServer.closeAllConnections();
        await new Promise<void>((resolve) => httpServer.close(() => resolve()));
      },
    };
    return bench;
  },
};

/** A protocol connection of its own, in the current protocol. */
const bareSocket = (url: string, clientId: string) => connectOwnSocket(url, { protocolVersion: PROTOCOL_VERSION, clientId });
