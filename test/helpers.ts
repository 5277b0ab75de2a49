import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { addRxPlugin, createRxDatabase, normalizeMangoQuery, prepareQuery, type RxCollection, type RxDatabase, type RxDocumentData, type RxJsonSchema, type RxStorage, type RxStorageInstance } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { Server as SocketIoServer } from 'socket.io';
import { io, type Socket } from 'socket.io-client';
import { afterEach } from 'vitest';
import { RxDBOfflineSyncPlugin, createSyncPlugin, type SyncApi, type SyncPluginOptions, type SyncResult } from '../src/client/index.js';
import { META_SCHEMA, type MetaKind } from '../src/client/meta-store.js';
import { createSyncServer, type SyncServer, type SyncServerOptions } from '../src/server/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { SyncError } from '../src/shared/errors.js';
import { MESSAGE, PROTOCOL_VERSION, fromPullPage, toPushRows, type PullPage, type RemoteEvent, type StoredEvent, type SyncEvent } from '../src/shared/protocol/index.js';

addRxPlugin(RxDBOfflineSyncPlugin);

export interface Todo {
  id: string;
  title: string;
  done: boolean;
  priority?: number;
  tags?: string[];
  owner?: string;
}

export const todoSchema: RxJsonSchema<Todo> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 100 },
    title: { type: 'string' },
    done: { type: 'boolean' },
    priority: { type: 'number' },
    tags: { type: 'array', items: { type: 'string' } },
    owner: { type: 'string' },
  },
  required: ['id', 'title', 'done'],
};

export interface TestServer {
  url: string;
  port: number;
  server: SyncServer<any>;
  httpServer: HttpServer;
  /** Stops it; once: a later call waits for the same stop. */
  stop(): Promise<void>;
}

const quiet = { enabled: false } as const;

/** A sync server on a random loopback port. */
export async function startServer(options: Partial<SyncServerOptions<any>> = {}, port = 0): Promise<TestServer> {
  const httpServer = createServer();
  const server = createSyncServer({ httpServer, logging: quiet, ...options });
  await server.start();
  await new Promise<void>((resolve) => httpServer.listen(port, '127.0.0.1', resolve));
  const actualPort = (httpServer.address() as AddressInfo).port;
  let stopped: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${actualPort}`,
    port: actualPort,
    server,
    httpServer,
    stop() {
      stopped ??= (async () => {
        await server.stop();
        httpServer.closeAllConnections();
        await new Promise<void>((resolve) => httpServer.close(() => resolve()));
      })();
      return stopped;
    },
  };
}

/**
 * For a test file whose tests start a server and clients: after each test,
 * closes the clients gathered in `clients` and stops the server `server()`
 * returns (stopping one already stopped is a no-op).
 */
export function closeAfterEach(clients: TestClient[], server: () => TestServer | undefined): void {
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
    await server()?.stop();
  });
}

/** A port nothing listens on right now (the system picks it), for a server started later. */
export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

let dbCounter = 0;
export const uniqueName = (prefix = 'db') => `${prefix}${Date.now().toString(36)}${(dbCounter++).toString(36)}`;

export interface TestClient {
  db: RxDatabase<{ todos: RxCollection<Todo> }>;
  todos: RxCollection<Todo>;
  sync: SyncApi;
  name: string;
  close(): Promise<void>;
}

/** An RxDB database on memory storage with a todos collection and the sync plugin added. */
export async function startClient(
  url: string,
  options: Partial<SyncPluginOptions> & { name?: string; multiInstance?: boolean; storage?: RxStorage<any, any> } = {},
): Promise<TestClient> {
  const { name = uniqueName(), multiInstance = false, storage, ...syncOptions } = options;
  const db = await openDatabase(name, multiInstance, storage);
  const sync = await db.addPlugin(
    createSyncPlugin({ serverUrl: url, collections: ['todos'], logging: quiet, retry: { maxRetries: 5, retryDelay: 50, useExponentialBackoff: true }, ...syncOptions }),
  );
  return { db, todos: db.todos, sync, name, close: () => db.close().then(() => undefined) };
}

export async function openDatabase(name: string, multiInstance = false, storage: RxStorage<any, any> = getRxStorageMemory()) {
  const db = await createRxDatabase<{ todos: RxCollection<Todo> }>({
    name,
    storage,
    multiInstance,
    ignoreDuplicate: multiInstance,
  });
  await db.addCollections({ todos: { schema: todoSchema } });
  return db;
}

/** Waits until `condition` holds, polling; fails with `message` after `timeout` ms. */
export async function waitFor(condition: () => boolean | Promise<boolean>, message = 'condition', timeout = 10_000): Promise<void> {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Whether `sync` lists exactly these pending documents (see SyncApi.getPendingDocuments). */
export function listsPending(sync: Pick<SyncApi, 'getPendingDocuments'>, expected: Record<string, string[]>): boolean {
  return JSON.stringify(sync.getPendingDocuments()) === JSON.stringify(expected);
}

/** Documents of a collection as plain sorted objects, for comparing clients. */
export async function contents(collection: RxCollection<Todo>): Promise<Todo[]> {
  const docs = await collection.find().exec();
  return docs.map((doc) => doc.toJSON() as Todo).sort((a, b) => a.id.localeCompare(b.id));
}

/** The events of a push as they went over the wire: rows, id first, document id third (see toPushRows). */
export function eventsOnWire(message: unknown): { id: string; documentId: string }[] {
  const rows = ((message ?? {}) as { events?: unknown[][] }).events ?? [];
  return rows.map((row) => ({ id: row[0] as string, documentId: row[2] as string }));
}

/** A raw protocol connection, as a hostile or hand-written client would open it. */
export async function rawSocket(url: string, auth: Record<string, unknown> = {}): Promise<Socket> {
  const socket = io(url, {
    transports: ['websocket'],
    reconnection: false,
    auth: { protocolVersion: PROTOCOL_VERSION, clientId: `raw-${uniqueName()}`, ...auth },
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('connect_error', reject);
  });
  return socket;
}

export function connectError(url: string, auth: Record<string, unknown>): Promise<Error & { data?: { code: string; message: string } }> {
  const socket = io(url, { transports: ['websocket'], reconnection: false, auth });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => {
      socket.close();
      reject(new Error('connected, but a refusal was expected'));
    });
    socket.once('connect_error', (error) => {
      socket.close();
      resolve(error);
    });
  });
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- raw protocol helpers (server and security tests) ------------------------------

let rawEventCounter = 0;

/** A valid event as a hand-written client would push it; override any field. */
export function rawEvent(overrides: Partial<SyncEvent> & { documentId: string }): SyncEvent {
  const n = rawEventCounter++;
  return {
    id: `evt-${uniqueName()}-${n}`,
    collection: 'todos',
    op: 'insert',
    data: { id: overrides.documentId, title: `doc ${overrides.documentId}`, done: false },
    baseEventId: null,
    hlc: formatHlc({ millis: Date.now(), counter: n % 1000, node: 'raw' }),
    ...overrides,
  };
}

/** Sends one message and resolves with the server's acknowledgement (rejects after `timeout` ms). */
export function request<T = any>(socket: Socket, type: string, message: unknown, timeout = 5000): Promise<T> {
  return socket.timeout(timeout).emitWithAck(type, message) as Promise<T>;
}

/** The client id a raw socket gave in its handshake. */
export function clientIdOf(socket: Socket): string {
  return (socket.auth as { clientId?: string }).clientId ?? '';
}

/** Pushes events as a client does, in rows (see toPushRows), and resolves with the server's acknowledgement. */
export function push<T = any>(socket: Socket, events: readonly SyncEvent[], timeout?: number): Promise<T> {
  return request<T>(socket, MESSAGE.push, toPushRows(events, clientIdOf(socket)), timeout);
}

/** Each outcome of an answer to a push in a word: `stored` for a sequence, otherwise its status. */
export function statuses(results: readonly unknown[]): string[] {
  return results.map((result) => (typeof result === 'number' ? 'stored' : (result as { status: string }).status));
}

/** Pulls, and resolves with the acknowledgement, its page read back as whole events (see fromPullPage). */
export async function pull(socket: Socket, message: Record<string, unknown>, timeout?: number): Promise<any> {
  const reply = await request(socket, MESSAGE.pull, message, timeout);
  if (!reply?.ok) return reply;
  const events: RemoteEvent[] = fromPullPage(reply as PullPage);
  return { ...reply, events };
}

/** Resolves with the next `sync:error` the server sends on this socket. */
export function nextServerError(socket: Socket, timeout = 5000): Promise<{ code: string; message: string; details?: any }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no sync:error within ${timeout} ms`)), timeout);
    socket.once(MESSAGE.error, (error) => {
      clearTimeout(timer);
      resolve(error);
    });
  });
}

/** Collects the live events a raw socket receives. */
export function collectLive(socket: Socket): StoredEvent[] {
  const received: StoredEvent[] = [];
  socket.on(MESSAGE.live, (message: { events: StoredEvent[] }) => received.push(...message.events));
  return received;
}

/**
 * A client that connects over HTTP long-polling and then goes silent: it never
 * polls again, so it never answers the server's pings (a dead phone, a pulled cable).
 */
export async function silentPollingClient(url: string, auth: Record<string, unknown> = {}): Promise<{ sid: string }> {
  const base = `${url}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base)).text();
  const { sid } = JSON.parse(open.slice(open.indexOf('{'))) as { sid: string };
  const handshake = { protocolVersion: PROTOCOL_VERSION, clientId: `silent-${uniqueName()}`, ...auth };
  await fetch(`${base}&sid=${sid}`, { method: 'POST', body: `40${JSON.stringify(handshake)}` });
  // A poll may bring the server's ping ("2") before the namespace answer; skip those without answering them.
  for (let polls = 0; polls < 5; polls++) {
    const answer = await (await fetch(`${base}&sid=${sid}`)).text();
    if (answer.includes('40{"sid"')) return { sid };
    if (answer.split('\x1e').some((packet) => packet !== '2')) throw new Error(`namespace connection refused: ${answer}`);
  }
  throw new Error('namespace connection not answered');
}

/** A record of the plugin's storage as it is stored (see meta-store.ts). */
export interface MetaRecord {
  id: string;
  kind: MetaKind;
  value: unknown;
  fullId?: string;
}

/** Every live record of one of the plugin's storage instances, by stored id. */
export async function metaRecords(instance: RxStorageInstance<any, unknown, unknown>, schema = META_SCHEMA): Promise<RxDocumentData<MetaRecord>[]> {
  const query = prepareQuery(schema, normalizeMangoQuery(schema, { selector: { _deleted: false } as never, sort: [{ id: 'asc' }] }));
  return (await instance.query(query)).documents as RxDocumentData<MetaRecord>[];
}

/**
 * A bare socket.io server on `http` for a test that plays the sync server
 * itself: it welcomes each connection as a sync server does (the client
 * sends nothing before the welcome), with generous limits.
 */
export function bareSyncIo(http: HttpServer): SocketIoServer {
  const server = new SocketIoServer(http);
  server.on('connection', (socket) => {
    socket.emit(MESSAGE.welcome, { serverTime: Date.now(), limits: { maxPayloadBytes: 4 * 1024 * 1024, maxEventsPerPush: 5000, maxPullLimit: 5000, maxClockDrift: null, maxAttachmentBytes: null }, heartbeatInterval: 25_000, expiresAt: null });
  });
  return server;
}

/** A syncNow() that failed as the result it used to resolve with: `{ success: false, error }` (it rejects with the SyncError). */
export function outcome(run: Promise<SyncResult>): Promise<SyncResult> {
  return run.then(
    (result) => result,
    (error: unknown) => ({ success: false, error: SyncError.from(error), syncedEvents: 0 }),
  );
}
