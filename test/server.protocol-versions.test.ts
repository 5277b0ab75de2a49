/**
 * The protocol version in the handshake: a server speaks one version and
 * refuses a client of any other, naming the one it speaks; a client of that
 * version pushes rows, gets one outcome per event, pulls pages of rows and
 * meets the plugin in one collection.
 */
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { formatHlc, withNode } from '../src/shared/hlc.js';
import { MESSAGE, PROTOCOL_VERSION, fromPullPage, toPushRows, type PullPage, type StoredEvent, type SyncEvent } from '../src/shared/protocol/index.js';
import { connectError, contents, push, rawEvent, rawSocket, request, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const sockets: Socket[] = [];
const clients: TestClient[] = [];

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

async function open(clientId = `raw-${uniqueName()}`) {
  const socket = await rawSocket(server!.url, { protocolVersion: PROTOCOL_VERSION, clientId });
  sockets.push(socket);
  return { socket, clientId };
}

const storedEvents = () => server!.server.getStorage().getEventsAfter(0);
/** A clock of this client's own, as the plugin writes them. */
const own = (clientId: string, counter: number, millis = Date.now()) => formatHlc({ millis, counter, node: clientId });

describe('the version in the handshake', () => {
  it('is 5', () => {
    expect(PROTOCOL_VERSION).toBe(5);
  });

  it('of any other version is refused with UNSUPPORTED_PROTOCOL naming the version the server speaks, before authenticate is asked', async () => {
    let asked = 0;
    server = await startServer({
      authenticate: () => {
        asked++;
        return { id: 'alice' };
      },
    });
    for (const version of [0, 1, 2, 3, 4, 6, 4.5]) {
      const refused = await connectError(server.url, { protocolVersion: version, clientId: 'c1', token: 'good' });
      expect(refused.data).toEqual({
        code: 'UNSUPPORTED_PROTOCOL',
        message: `protocol version ${version} is not supported; this server speaks protocol version ${PROTOCOL_VERSION}`,
        details: { supported: [PROTOCOL_VERSION] },
      });
    }
    expect(asked).toBe(0);
    expect(server.server.getClientsCount()).toBe(0);

    // A version that is no number, or none, is a malformed handshake.
    for (const auth of [{ protocolVersion: '5', clientId: 'c1' }, { clientId: 'c1' }]) {
      const malformed = await connectError(server.url, { ...auth, token: 'good' });
      expect(malformed.data).toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('protocolVersion') });
    }

    const { socket } = await open();
    expect(socket.connected).toBe(true);
    expect(asked).toBe(1);
  });
});

describe('pushes', () => {
  it('are stored as the events their rows stand for: each collection named once, the clock made whole, base and patch where given', async () => {
    server = await startServer({ collections: ['todos', 'notes'] });
    const { socket, clientId } = await open();
    const millis = Date.now();
    const first: SyncEvent[] = [
      rawEvent({ documentId: 'a', hlc: own(clientId, 0, millis) }),
      rawEvent({ collection: 'notes', documentId: 'n', hlc: own(clientId, 1, millis) }),
      // A resolution that kept a remote write's clock: the node stays on the wire.
      rawEvent({ documentId: 'k', hlc: formatHlc({ millis, counter: 2, node: 'someone-else' }) }),
    ];
    const second: SyncEvent[] = [
      rawEvent({ documentId: 'a', op: 'update', data: { id: 'a', title: 'renamed', done: false }, patch: [{ op: 'replace', path: '/title', value: 'renamed' }], baseEventId: first[0]!.id, hlc: own(clientId, 3, millis) }),
      rawEvent({ collection: 'notes', documentId: 'n', op: 'delete', baseEventId: first[1]!.id, hlc: own(clientId, 4, millis) }),
    ];
    const rows = [toPushRows(first, clientId), toPushRows(second, clientId)];
    expect(rows.map((message) => message.collections)).toEqual([['todos', 'notes'], ['todos', 'notes']]);
    expect(rows.map((message) => message.events.map((row) => row.length))).toEqual([[6, 6, 6], [8, 7]]);
    expect(rows[0]!.events.map((row) => row[5])).toEqual([own(clientId, 0, millis).slice(0, 22), own(clientId, 1, millis).slice(0, 22), first[2]!.hlc]);

    expect(await request(socket, MESSAGE.push, rows[0])).toEqual({ ok: true, results: [1, 2, 3] });
    expect(await request(socket, MESSAGE.push, rows[1])).toEqual({ ok: true, results: [4, 5] });
    // A retry is answered with the sequence stored first.
    expect(await request(socket, MESSAGE.push, rows[1])).toEqual({ ok: true, results: [4, 5] });
    const stored = await storedEvents();
    expect(stored.map(({ seq: _seq, serverTime: _time, ...event }) => event)).toEqual([...first, ...second].map((event) => ({ ...event, clientId })));
  });

  it('are answered with one outcome per event, in order: a conflict with the head, a refusal with what stopped it, never the event id', async () => {
    server = await startServer({ collections: ['todos'] });
    const { socket } = await open();
    const first = rawEvent({ documentId: 'a' });
    expect((await push(socket, [first])).results).toEqual([1]);

    const stale = rawEvent({ documentId: 'a' });
    const unknown = rawEvent({ documentId: 'b', collection: 'secrets' });
    const reply = await push(socket, [first, stale, unknown]);
    expect(reply.results[0]).toBe(1);
    expect(reply.results[1]).toMatchObject({ status: 'conflict', head: { documentId: 'a', seq: 1, eventId: first.id } });
    expect(reply.results[2]).toMatchObject({ status: 'rejected', error: { code: 'UNKNOWN_COLLECTION' } });
    expect(reply.results[1]).not.toHaveProperty('id');
    expect(await server.server.getStorage().countEvents()).toBe(1);
  });

  it('answer a conflict over a document the pusher may not read as a refusal, without the document', async () => {
    server = await startServer({ authorize: (_user, _collection, operation, document) => operation !== 'read' || document.title !== 'secret' });
    const { socket } = await open();
    await push(socket, [rawEvent({ documentId: 'a', data: { id: 'a', title: 'secret', done: false } })]);
    const reply = await push(socket, [rawEvent({ documentId: 'a' })]);
    expect(reply.results).toEqual([{ status: 'rejected', error: expect.objectContaining({ code: 'UNAUTHORIZED' }) }]);
  });

  it('refuse a malformed push with an error naming the row, store nothing of it, and go on serving', async () => {
    server = await startServer();
    const { socket, clientId } = await open();
    const good = toPushRows([rawEvent({ documentId: 'ok', hlc: own(clientId, 0) })], clientId);
    const row = good.events[0]!;
    const refusals: [unknown, string][] = [
      [{ collections: ['todos'], events: [row, [...row.slice(0, 1), 1, ...row.slice(2)]] }, 'events.1.1: event'],
      [{ collections: ['todos'], events: [[...row, null, [], 'more']] }, 'events.0'],
      [{ collections: ['todos'], events: [[row[0], 0, row[2], 'upsert', row[4], row[5]]] }, 'events.0.3'],
      [{ collections: ['todos'], events: [[row[0], 0, row[2], 'insert', row[4], 'yesterday']] }, 'events.0.5'],
      [{ collections: ['todos'], events: [[row[0], 0, row[2], 'insert', row[4], '001700000000000-00000']] }, 'events.0.5'],
      [{ collections: [], events: [row] }, 'collections'],
      // Events as objects, not rows.
      [{ events: [rawEvent({ documentId: 'object' })] }, 'collections'],
      [{ collections: ['todos'], events: [rawEvent({ documentId: 'object' })] }, 'events.0'],
    ];
    for (const [message, where] of refusals) {
      const reply = await request(socket, MESSAGE.push, message);
      expect(reply).toMatchObject({ ok: false, error: { code: 'INVALID_MESSAGE' } });
      expect(reply.error.message).toContain(where);
    }
    expect(await server.server.getStorage().countEvents()).toBe(0);
    expect(await request(socket, MESSAGE.push, good)).toEqual({ ok: true, results: [1] });
  });
});

describe('pulls', () => {
  it('are answered in pages of rows, each collection and clock node listed once, that read back as the stored events', async () => {
    server = await startServer({ collections: ['todos', 'notes'] });
    const writers = [await open(), await open()];
    const millis = Date.now();
    let counter = 0;
    for (const [i, writer] of writers.entries()) {
      const write = (collection: string, documentId: string) => rawEvent({ collection, documentId, hlc: own(writer.clientId, counter++, millis) });
      await push(writer.socket, [write('todos', `t${i}`), write('notes', `n${i}`), write('todos', `u${i}`)]);
    }
    // A clock whose node is not its author (a resolution that kept a remote write's clock).
    const kept = rawEvent({ documentId: 'kept', hlc: own(writers[0]!.clientId, counter++, millis) });
    await push(writers[1]!.socket, [kept]);

    const page = (await request((await open()).socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos', 'notes'] })) as PullPage & { ok: true };
    expect(page).not.toHaveProperty('events.0.id');
    expect(page.collections).toEqual(['todos', 'notes']);
    expect(page.nodes).toEqual(writers.map((writer) => writer.clientId));
    expect(page.events).toHaveLength(7);
    // Only the row whose author is not its clock's node names it.
    expect(page.events.map((row) => row.length)).toEqual([8, 8, 8, 8, 8, 8, 9]);
    expect(page.events[6]![8]).toBe(writers[1]!.clientId);
    expect(page).toMatchObject({ checkpoint: 7, hasMore: false });
    const stored = await storedEvents();
    expect(fromPullPage(page)).toEqual(stored.map(({ id, collection, documentId, op, data, hlc, seq, clientId }) => ({ id, collection, documentId, op, data, hlc, seq, clientId })));
  });

  it('reach the plugin, which stamps each document with its author from the clock\'s node', async () => {
    server = await startServer();
    const pulls: unknown[] = [];
    const rowLengths: number[] = [];
    server.server.getIo().on('connection', (socket) => {
      socket.onAny((type: string) => type === MESSAGE.pull && pulls.push(socket.handshake.auth.protocolVersion));
      // Acknowledgements as they leave, encoded (`3<id>[reply]`): the page as it crossed the wire.
      socket.conn.on('packetCreate', (packet: { data?: unknown }) => {
        if (typeof packet.data !== 'string' || !packet.data.startsWith('3')) return;
        const [reply] = JSON.parse(packet.data.slice(packet.data.indexOf('['))) as [{ events?: unknown[][] }];
        if (Array.isArray(reply.events?.[0])) rowLengths.push(...reply.events.map((row) => row.length));
      });
    });
    const writer = await open();
    const docs = Array.from({ length: 5 }, (_, i) => rawEvent({ documentId: `d${i}`, data: { id: `d${i}`, title: `title ${i}`, done: i % 2 === 0 }, hlc: own(writer.clientId, i) }));
    await push(writer.socket, docs);
    const plugin = await startClient(server.url, { pullBatchSize: 2 });
    clients.push(plugin);
    await waitFor(async () => (await plugin.todos.find().exec()).length === 5, 'the plugin to pull all five');
    expect(pulls.length).toBeGreaterThanOrEqual(3);
    expect(new Set(pulls)).toEqual(new Set([PROTOCOL_VERSION]));
    // Every author came from its clock's node.
    expect(rowLengths).toEqual([8, 8, 8, 8, 8]);
    expect((await contents(plugin.todos)).map((doc) => doc.title)).toEqual(docs.map((_, i) => `title ${i}`));
    const stored = await plugin.todos.storageInstance.findDocumentsById(docs.map((doc) => doc.documentId), false);
    expect(stored.map((doc) => (doc._meta as Record<string, unknown[]>).rxofflinesync?.slice(0, 4))).toEqual(
      (await storedEvents()).map((event) => [event.seq, event.id, event.hlc, event.clientId]),
    );
  });
});

describe('a raw client and the plugin in one collection', () => {
  it('see each other\'s writes whole: the plugin pushes rows without its own node, and live events carry the author', async () => {
    server = await startServer();
    // What the plugin puts on the wire, before the server reads it.
    const pushed: unknown[] = [];
    server.server.getIo().on('connection', (socket) => {
      socket.onAny((type: string, message: { events?: unknown[] }) => {
        if (type === MESSAGE.push) pushed.push(...structuredClone(message.events ?? []));
      });
    });
    const plugin = await startClient(server.url);
    clients.push(plugin);
    const raw = await open();
    const live: StoredEvent[] = [];
    raw.socket.on(MESSAGE.live, (message: { events: StoredEvent[] }) => live.push(...message.events));
    await request(raw.socket, MESSAGE.subscribe, { collections: ['todos'] });

    await plugin.todos.insert({ id: 'from-plugin', title: 'written by the plugin', done: false });
    await waitFor(() => live.length === 1, 'the raw client to receive the write live');
    const clientId = live[0]!.clientId;
    expect(clientId).not.toBe(raw.clientId);
    // The node the plugin left out on the wire is back in the clock every other client sees.
    expect(live[0]!.hlc).toBe(withNode(live[0]!.hlc.slice(0, 22), clientId));
    expect(pushed).toEqual([[live[0]!.id, 0, 'from-plugin', 'insert', { id: 'from-plugin', title: 'written by the plugin', done: false }, live[0]!.hlc.slice(0, 22)]]);

    const fromRaw = rawEvent({ documentId: 'from-raw', data: { id: 'from-raw', title: 'written by hand', done: true } });
    expect((await push(raw.socket, [fromRaw])).results).toEqual([2]);
    await waitFor(async () => (await contents(plugin.todos)).length === 2, 'the plugin to receive the raw client\'s write');
    expect(await contents(plugin.todos)).toEqual([
      { id: 'from-plugin', title: 'written by the plugin', done: false },
      { id: 'from-raw', title: 'written by hand', done: true },
    ]);
  });
});
