/**
 * One verdict for every identifier, on every storage (invariant 11): a
 * client id that is no clock node is refused at the handshake; an event
 * whose document id or clock no storage can keep as it is is refused alone,
 * with a clear code, and the rest of its push is stored; and what is stored
 * is the same on memory, SQLite and PostgreSQL, and reaches a fresh client.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRxDatabase, type RxCollection, type RxJsonSchema } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { afterEach, describe, expect, it } from 'vitest';
import { createSyncPlugin } from '../src/client/index.js';
import { MemorySyncStorage, PostgresSyncStorage, SqliteSyncStorage, type SyncStorage } from '../src/server/storage/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { MAX_DOCUMENT_ID_BYTES, MESSAGE, PROTOCOL_VERSION, toPushRows, type StoredEvent, type SyncEvent } from '../src/shared/protocol/index.js';
import { connectError, rawEvent, rawSocket, request, startClient, startServer, uniqueName, waitFor, type TestServer } from './helpers.js';
import { serviceReady, useTestDatabase } from './services.js';

/** A collection whose primary key takes every document id the protocol allows. */
const wideSchema: RxJsonSchema<{ id: string }> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: { id: { type: 'string', maxLength: MAX_DOCUMENT_ID_BYTES } },
  required: ['id'],
};

/** The real plugin on RxDB's memory storage, pulling everything once; its documents by id. */
async function freshReader(url: string): Promise<Map<string, Record<string, unknown>>> {
  const db = await createRxDatabase<{ todos: RxCollection<{ id: string }> }>({ name: uniqueName('reader'), storage: getRxStorageMemory() });
  try {
    await db.addCollections({ todos: { schema: wideSchema } });
    const sync = await db.addPlugin(createSyncPlugin({ serverUrl: url, collections: ['todos'], autoSync: false, logging: { enabled: false } }));
    const result = await sync.syncNow();
    expect(result, JSON.stringify(sync.getStatus().error)).toMatchObject({ success: true });
    const docs = await db.todos.find().exec();
    return new Map(docs.map((doc) => [doc.primary, doc.toJSON() as Record<string, unknown>]));
  } finally {
    await db.close();
  }
}

let server: TestServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

describe('the handshake holds the client id to what a clock node may be', () => {
  it('refuses a client id with a line break, naming the field and the character, and the server keeps serving', async () => {
    server = await startServer();
    const refused = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'phone\nof-ana' });
    expect(refused.data).toMatchObject({ code: 'INVALID_MESSAGE' });
    expect(refused.data!.message).toContain('invalid handshake: clientId: a client id is the node of a clock');
    expect(refused.data!.message).toContain('U+000A at index 5, a line break');
    for (const clientId of ['nul\u0000', 'lone\ud800', 'tab\t', 'line\u2028separator', '\u0085', 'x'.repeat(129), '']) {
      const error = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId });
      expect(error.data, JSON.stringify(clientId)).toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('clientId') });
    }
    expect(await server.server.getStorage().countEvents()).toBe(0);

    // A client id in any script is a clock node, and what its client writes reaches the others.
    const socket = await rawSocket(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: '日本の端末 😀 טלפון' });
    const event = rawEvent({ documentId: 'from-cjk', hlc: formatHlc({ millis: Date.now() - 1000, counter: 0, node: '日本の端末 😀 טלפון' }) });
    const reply = await request(socket, MESSAGE.push, toPushRows([event], '日本の端末 😀 טלפון'));
    expect(reply).toMatchObject({ ok: true, results: [1] });
    socket.close();
    const reader = await freshReader(server.url);
    expect(reader.get('from-cjk')).toEqual(event.data);
  });
});

const postgresReady = await serviceReady('postgres');

const temporaryDirs: string[] = [];
afterEach(() => {
  for (const dir of temporaryDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A push of ten ordinary documents with events no storage could keep as they are between them. */
function mixedPush(clientId: string) {
  const time = Date.now() - 60_000;
  const ordinary = Array.from({ length: 10 }, (_, i) => rawEvent({ documentId: `ordinary-${i}`, hlc: formatHlc({ millis: time + i, counter: 0, node: clientId }) }));
  const stamp = (node: string, n: number) => formatHlc({ millis: time + 100 + n, counter: 0, node });
  const unstorable: [SyncEvent, string][] = [
    // 1024 characters of CJK: within a limit in characters, 3072 bytes, more than a PostgreSQL index entry holds.
    [rawEvent({ documentId: '文'.repeat(1024), hlc: stamp(clientId, 1) }), 'documentId: a document id is at most 1024 bytes of UTF-8; this one has 3072'],
    [rawEvent({ documentId: 'lone-\ud800', hlc: stamp(clientId, 2) }), 'documentId: a document id holds a NUL character or an unpaired surrogate'],
    [rawEvent({ documentId: 'nul-node', hlc: stamp('other\u0000node', 3) }), 'hlc: the node of a clock may not hold control characters'],
    [rawEvent({ documentId: 'surrogate-node', hlc: stamp('other\udc00', 4) }), 'hlc: the node of a clock may not hold'],
    [rawEvent({ documentId: 'newline-node', hlc: stamp('other\nnode', 5) }), 'U+000A at index 5, a line break'],
  ];
  // The longest ids that are allowed, in 3- and 4-byte characters, are stored.
  const longest = [rawEvent({ documentId: `${'文'.repeat(341)}x`, hlc: stamp(clientId, 6) }), rawEvent({ documentId: '😀'.repeat(256), hlc: stamp(clientId, 7) })];
  const events = [...ordinary.slice(0, 3), unstorable[0]![0], ...ordinary.slice(3, 6), unstorable[1]![0], unstorable[2]![0], longest[0]!, ...ordinary.slice(6), unstorable[3]![0], longest[1]!, unstorable[4]![0]];
  return { events, stored: [...ordinary, ...longest], unstorable };
}

describe.each(['memory', 'sqlite', 'postgres'] as const)('one verdict per event, on %s storage', (name) => {
  const database = name === 'postgres' && postgresReady ? useTestDatabase() : undefined;
  const open = (): SyncStorage => {
    if (name === 'memory') return new MemorySyncStorage();
    if (name === 'sqlite') {
      const dir = mkdtempSync(join(tmpdir(), 'rxos-storable-'));
      temporaryDirs.push(dir);
      return new SqliteSyncStorage({ path: join(dir, 'sync.db') });
    }
    return new PostgresSyncStorage({ connectionString: database!.connectionString, schema: database!.freshSchema('storable') });
  };

  it.skipIf(name === 'postgres' && !postgresReady)('refuses each event no storage could keep, alone and counted; stores the rest, which a fresh client pulls as pushed', async () => {
    const storage = open();
    try {
      server = await startServer({ storage });
      const clientId = `writer-${name}`;
      const socket = await rawSocket(server.url, { protocolVersion: PROTOCOL_VERSION, clientId });
      const { events, stored, unstorable } = mixedPush(clientId);
      const reply = await request(socket, MESSAGE.push, toPushRows(events, clientId));
      socket.close();
      expect(reply.ok, JSON.stringify(reply.error)).toBe(true);
      for (const [event, reason] of unstorable) {
        const outcome = reply.results[events.indexOf(event)];
        expect(outcome, JSON.stringify(event.documentId).slice(0, 40)).toMatchObject({ status: 'rejected', error: { code: 'INVALID_MESSAGE', message: expect.stringContaining(reason) } });
      }
      expect(reply.results.filter((outcome: unknown) => typeof outcome === 'number')).toHaveLength(stored.length);
      expect(server.server.getStats()).toMatchObject({ accepted: stored.length, rejected: unstorable.length });

      // Stored exactly as pushed, whatever the storage.
      const kept = await server.server.getStorage().getEventsAfter(0);
      const shape = (event: SyncEvent | StoredEvent) => ({ id: event.id, documentId: event.documentId, data: event.data, hlc: event.hlc, op: event.op });
      expect(kept.map(shape)).toEqual(events.filter((event) => stored.includes(event)).map(shape));
      const reader = await freshReader(server.url);
      expect(new Set(reader.keys())).toEqual(new Set(stored.map((event) => event.documentId)));
      for (const event of stored) expect(reader.get(event.documentId)).toEqual(event.data);
    } finally {
      await server?.stop();
      server = undefined;
      await storage.close();
    }
  });
});

describe('documents every storage keeps alike', () => {
  it('refuses, for that event alone, a number JSON cannot carry (1e400 parses as Infinity)', async () => {
    server = await startServer();
    const socket = await rawSocket(server.url, { clientId: 'writer' });
    try {
      const fine = rawEvent({ documentId: 'fine' });
      const huge = rawEvent({ documentId: 'huge-number' });
      // As a hand-written client sends it: JSON.stringify would write Infinity as null.
      const json = JSON.stringify(toPushRows([huge, fine], 'writer')).replace('"title":"doc huge-number"', '"title":1e400');
      const engine = socket.io.engine as unknown as { send(data: string): void; on(event: 'packet', listener: (packet: { data?: unknown }) => void): void };
      const reply = new Promise<any>((resolve) => {
        engine.on('packet', (packet) => {
          const match = typeof packet.data === 'string' ? /^3901(\[.*)$/s.exec(packet.data) : null;
          if (match) resolve((JSON.parse(match[1]!) as unknown[])[0]);
        });
      });
      engine.send(`2901[${JSON.stringify(MESSAGE.push)},${json}]`);
      const { results } = await reply;
      expect(results[0]).toMatchObject({ status: 'rejected', error: { code: 'INVALID_MESSAGE', message: expect.stringContaining('Infinity') } });
      expect(results[1]).toBeTypeOf('number');
      expect(server.server.getStats()).toMatchObject({ accepted: 1, rejected: 1 });
    } finally {
      socket.close();
    }
  });
});

describe('a fresh client of the server, whatever another client sent', () => {
  it('keeps syncing with everyone after a client tried a client id with a line break', async () => {
    server = await startServer();
    await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'evil\nclient' });
    const a = await startClient(server.url, { autoSync: false });
    const b = await startClient(server.url, { autoSync: false });
    try {
      await a.todos.insert({ id: 'shared', title: 'from a', done: false });
      await waitFor(() => a.sync.getStatus().pendingEvents === 1, 'the write to be logged');
      expect(await a.sync.syncNow()).toMatchObject({ success: true });
      expect(await b.sync.syncNow()).toMatchObject({ success: true });
      expect((await b.todos.findOne('shared').exec())?.title).toBe('from a');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});
