/**
 * Protocols 4, 3 and 2 beside protocol 1: slimmer pushes and answers, pulls
 * in pages of rows, pushes in rows, the same server still serving clients of
 * earlier releases, and clients of each version meeting in one collection.
 */
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { formatHlc, withNode, withoutNode } from '../src/shared/hlc.js';
import { MESSAGE, fromPullPage, toPushRows, type PullPage, type StoredEvent, type SyncEvent } from '../src/shared/protocol.js';
import { contents, rawEvent, rawSocket, request, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const sockets: Socket[] = [];
const clients: TestClient[] = [];

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

async function open(protocolVersion: 1 | 2 | 3 | 4, clientId = `raw-${uniqueName()}`) {
  const socket = await rawSocket(server!.url, { protocolVersion, clientId });
  sockets.push(socket);
  return { socket, clientId };
}

const storedEvents = () => server!.server.getStorage().getEventsAfter(0);

describe('protocol 2 pushes', () => {
  it('complete a clock without its node with the pusher\'s id and a missing base as null, and are answered with sequences', async () => {
    server = await startServer();
    const { socket, clientId } = await open(2);
    const full = formatHlc({ millis: Date.now(), counter: 0, node: clientId });
    const { baseEventId: _, ...first } = rawEvent({ documentId: 'a', hlc: withoutNode(full, clientId) });
    expect(first.hlc).toHaveLength(22);
    const second = rawEvent({ documentId: 'b', hlc: formatHlc({ millis: Date.now(), counter: 1, node: clientId }) });

    const reply = await request(socket, MESSAGE.push, { events: [first, second] });
    expect(reply).toEqual({ ok: true, results: [1, 2] });

    const stored = await storedEvents();
    expect(stored.map((event) => [event.documentId, event.hlc, event.baseEventId, event.clientId])).toEqual([
      ['a', full, null, clientId],
      ['b', second.hlc, null, clientId],
    ]);
  });

  it('keep a clock whose node is another client\'s (a resolution that kept a remote write\'s clock)', async () => {
    server = await startServer();
    const { socket } = await open(2);
    const foreign = formatHlc({ millis: Date.now(), counter: 3, node: 'someone-else' });
    expect(await request(socket, MESSAGE.push, { events: [rawEvent({ documentId: 'a', hlc: foreign })] })).toEqual({ ok: true, results: [1] });
    expect((await storedEvents())[0]!.hlc).toBe(foreign);
  });

  it('answer a retry with the sequence stored first, and a conflict or refusal with what stopped it', async () => {
    server = await startServer({ collections: ['todos'] });
    const { socket } = await open(2);
    const first = rawEvent({ documentId: 'a' });
    expect((await request(socket, MESSAGE.push, { events: [first] })).results).toEqual([1]);

    const stale = rawEvent({ documentId: 'a' });
    const unknown = rawEvent({ documentId: 'b', collection: 'secrets' });
    const reply = await request(socket, MESSAGE.push, { events: [first, stale, unknown] });
    expect(reply.results[0]).toBe(1);
    expect(reply.results[1]).toMatchObject({ status: 'conflict', head: { documentId: 'a', seq: 1, eventId: first.id } });
    expect(reply.results[2]).toMatchObject({ status: 'rejected', error: { code: 'UNKNOWN_COLLECTION' } });
    expect(reply.results[1]).not.toHaveProperty('id');
    expect(await server.server.getStorage().countEvents()).toBe(1);
  });

  it('answer a conflict over a document the pusher may not read as a refusal, without the document', async () => {
    server = await startServer({ authorize: (_user, _collection, operation, document) => operation !== 'read' || document.title !== 'secret' });
    const { socket } = await open(2);
    await request(socket, MESSAGE.push, { events: [rawEvent({ documentId: 'a', data: { id: 'a', title: 'secret', done: false } })] });
    const reply = await request(socket, MESSAGE.push, { events: [rawEvent({ documentId: 'a' })] });
    expect(reply.results).toEqual([{ status: 'rejected', error: expect.objectContaining({ code: 'UNAUTHORIZED' }) }]);
  });

  it('refuse a malformed clock as INVALID_MESSAGE and store nothing of the push', async () => {
    server = await startServer();
    const { socket } = await open(2);
    for (const hlc of ['001700000000000-00000', '001700000000000-000000-', 'yesterday']) {
      const reply = await request(socket, MESSAGE.push, { events: [rawEvent({ documentId: 'ok' }), rawEvent({ documentId: 'bad', hlc })] });
      expect(reply).toMatchObject({ ok: false, error: { code: 'INVALID_MESSAGE' } });
      expect(reply.error.message).toContain('events.1.hlc');
    }
    expect(await server.server.getStorage().countEvents()).toBe(0);
  });
});

describe('protocol 4 pushes', () => {
  it('are stored as the events their rows stand for: each collection named once, the clock made whole, base and patch where given', async () => {
    server = await startServer({ collections: ['todos', 'notes'] });
    const { socket, clientId } = await open(4);
    const millis = Date.now();
    const own = (counter: number) => formatHlc({ millis, counter, node: clientId });
    const first: SyncEvent[] = [
      rawEvent({ documentId: 'a', hlc: own(0) }),
      rawEvent({ collection: 'notes', documentId: 'n', hlc: own(1) }),
      // A resolution that kept a remote write's clock: the node stays on the wire.
      rawEvent({ documentId: 'k', hlc: formatHlc({ millis, counter: 2, node: 'someone-else' }) }),
    ];
    const second: SyncEvent[] = [
      rawEvent({ documentId: 'a', op: 'update', data: { id: 'a', title: 'renamed', done: false }, patch: [{ op: 'replace', path: '/title', value: 'renamed' }], baseEventId: first[0]!.id, hlc: own(3) }),
      rawEvent({ collection: 'notes', documentId: 'n', op: 'delete', baseEventId: first[1]!.id, hlc: own(4) }),
    ];
    const rows = [toPushRows(first, clientId), toPushRows(second, clientId)];
    expect(rows.map((message) => message.collections)).toEqual([['todos', 'notes'], ['todos', 'notes']]);
    expect(rows.map((message) => message.events.map((row) => row.length))).toEqual([[6, 6, 6], [8, 7]]);
    expect(rows[0]!.events.map((row) => row[5])).toEqual([own(0).slice(0, 22), own(1).slice(0, 22), first[2]!.hlc]);

    expect(await request(socket, MESSAGE.push, rows[0])).toEqual({ ok: true, results: [1, 2, 3] });
    expect(await request(socket, MESSAGE.push, rows[1])).toEqual({ ok: true, results: [4, 5] });
    // A retry is answered with the sequence stored first.
    expect(await request(socket, MESSAGE.push, rows[1])).toEqual({ ok: true, results: [4, 5] });
    const stored = await storedEvents();
    expect(stored.map(({ seq: _seq, serverTime: _time, ...event }) => event)).toEqual([...first, ...second].map((event) => ({ ...event, clientId })));
  });

  it('refuse a malformed push with an error naming the row, store nothing of it, and go on serving', async () => {
    server = await startServer();
    const { socket, clientId } = await open(4);
    const good = toPushRows([rawEvent({ documentId: 'ok', hlc: formatHlc({ millis: Date.now(), counter: 0, node: clientId }) })], clientId);
    const row = good.events[0]!;
    const refusals: [unknown, string][] = [
      [{ collections: ['todos'], events: [row, [...row.slice(0, 1), 1, ...row.slice(2)]] }, 'events.1.1: event'],
      [{ collections: ['todos'], events: [[...row, null, [], 'more']] }, 'events.0'],
      [{ collections: ['todos'], events: [[row[0], 0, row[2], 'upsert', row[4], row[5]]] }, 'events.0.3'],
      [{ collections: ['todos'], events: [[row[0], 0, row[2], 'insert', row[4], 'yesterday']] }, 'events.0.5'],
      [{ collections: [], events: [row] }, 'collections'],
      // Protocol 2's form, from a client that said it speaks 4.
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

describe('a server speaking both versions', () => {
  it('answers a protocol 1 client in protocol 1: each result names its event', async () => {
    server = await startServer();
    const { socket } = await open(1);
    const event = rawEvent({ documentId: 'a' });
    expect(await request(socket, MESSAGE.push, { events: [event, event] })).toEqual({
      ok: true,
      results: [
        { id: event.id, status: 'accepted', seq: 1 },
        { id: event.id, status: 'duplicate', seq: 1 },
      ],
    });
  });

  it('lets clients of both versions meet in one collection: each sees the other\'s writes whole', async () => {
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
    const old = await open(1);
    const live: StoredEvent[] = [];
    old.socket.on(MESSAGE.live, (message: { events: StoredEvent[] }) => live.push(...message.events));
    await request(old.socket, MESSAGE.subscribe, { collections: ['todos'] });

    await plugin.todos.insert({ id: 'from-new', title: 'written by this release', done: false });
    await waitFor(() => live.length === 1, 'the protocol 1 client to receive the write live');
    const clientId = live[0]!.clientId;
    expect(clientId).not.toBe(old.clientId);
    // The node the plugin left out on the wire is back in the clock every other client sees.
    expect(live[0]!.hlc.endsWith(`-${clientId}`)).toBe(true);
    expect(live[0]!.hlc).toBe(withNode(live[0]!.hlc.slice(0, 22), clientId));
    // It went out as a row (protocol 4): the collection by its index, the clock without the node, no base.
    expect(pushed).toEqual([[live[0]!.id, 0, 'from-new', 'insert', { id: 'from-new', title: 'written by this release', done: false }, live[0]!.hlc.slice(0, 22)]]);

    const fromOld = rawEvent({ documentId: 'from-old', data: { id: 'from-old', title: 'written by an older release', done: true } });
    expect((await request(old.socket, MESSAGE.push, { events: [fromOld] })).results[0]).toMatchObject({ status: 'accepted' });
    await waitFor(async () => (await contents(plugin.todos)).length === 2, 'the plugin to receive the older client\'s write');
    expect(await contents(plugin.todos)).toEqual([
      { id: 'from-new', title: 'written by this release', done: false },
      { id: 'from-old', title: 'written by an older release', done: true },
    ]);
    const pulled = await request(old.socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });
    expect(pulled.events.map((event: StoredEvent) => [event.documentId, event.hlc.endsWith(`-${event.clientId}`)])).toEqual([
      ['from-new', true],
      ['from-old', false],
    ]);
  });

  it('sends protocol 2 pulls without an author that is the clock\'s node, and the plugin fills it back in', async () => {
    server = await startServer();
    const writer = await open(2);
    const mine = rawEvent({ documentId: 'mine', hlc: withoutNode(formatHlc({ millis: Date.now(), counter: 0, node: writer.clientId }), writer.clientId) });
    const kept = rawEvent({ documentId: 'kept', hlc: formatHlc({ millis: Date.now(), counter: 1, node: 'someone-else' }) });
    await request(writer.socket, MESSAGE.push, { events: [mine, kept] });

    const slim = await request((await open(2)).socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });
    expect(slim.events.map((event: StoredEvent) => [event.documentId, event.clientId])).toEqual([
      ['mine', undefined],
      ['kept', writer.clientId],
    ]);
    const whole = await request((await open(1)).socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });
    expect(whole.events.map((event: StoredEvent) => event.clientId)).toEqual([writer.clientId, writer.clientId]);

    const plugin = await startClient(server.url);
    clients.push(plugin);
    await waitFor(async () => (await plugin.todos.find().exec()).length === 2, 'the plugin to pull both');
    const docs = await plugin.todos.storageInstance.findDocumentsById(['mine', 'kept'], false);
    // Each document's stamp names the author the server stored, left out on the wire or not.
    expect(docs.map((doc) => [doc.id, (doc._meta as Record<string, unknown[]>).rxofflinesync?.[3]])).toEqual([
      ['mine', writer.clientId],
      ['kept', writer.clientId],
    ]);
  });

  it('sends protocol 3 pulls as pages of rows, each collection and clock node listed once, that read back as the whole events', async () => {
    server = await startServer({ collections: ['todos', 'notes'] });
    const writers = [await open(2), await open(2)];
    const millis = Date.now();
    let counter = 0;
    for (const [i, writer] of writers.entries()) {
      const own = (collection: string, documentId: string) =>
        rawEvent({ collection, documentId, hlc: withoutNode(formatHlc({ millis, counter: counter++, node: writer.clientId }), writer.clientId) });
      await request(writer.socket, MESSAGE.push, { events: [own('todos', `t${i}`), own('notes', `n${i}`), own('todos', `u${i}`)] });
    }
    // A clock whose node is not its author (a resolution that kept a remote write's clock).
    const kept = rawEvent({ documentId: 'kept', hlc: formatHlc({ millis, counter: counter++, node: writers[0]!.clientId }) });
    await request(writers[1]!.socket, MESSAGE.push, { events: [kept] });

    const ask = { checkpoint: 0, collections: ['todos', 'notes'] };
    const page = (await request((await open(3)).socket, MESSAGE.pull, ask)) as PullPage & { ok: true };
    expect(page).not.toHaveProperty('events.0.id');
    expect(page.collections).toEqual(['todos', 'notes']);
    expect(page.nodes).toEqual(writers.map((writer) => writer.clientId));
    expect(page.events).toHaveLength(7);
    // Only the row whose author is not its clock's node names it.
    expect(page.events.map((row) => row.length)).toEqual([8, 8, 8, 8, 8, 8, 9]);
    expect(page.events[6]![8]).toBe(writers[1]!.clientId);

    const whole = await request((await open(1)).socket, MESSAGE.pull, ask);
    expect(fromPullPage(page)).toEqual(whole.events);
    expect(page.checkpoint).toBe(whole.checkpoint);
    expect(page.hasMore).toBe(whole.hasMore);
  });

  it('lets the plugin, speaking protocol 4, pull pages (as in 3) of another client\'s writes and stamp each document with its author', async () => {
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
    const writer = await open(2);
    // Clocks of the writer's own, as the plugin writes them: each row leaves its author to the node.
    const docs = Array.from({ length: 5 }, (_, i) =>
      rawEvent({
        documentId: `d${i}`,
        data: { id: `d${i}`, title: `title ${i}`, done: i % 2 === 0 },
        hlc: withoutNode(formatHlc({ millis: Date.now(), counter: i, node: writer.clientId }), writer.clientId),
      }),
    );
    await request(writer.socket, MESSAGE.push, { events: docs });
    const plugin = await startClient(server.url, { pullBatchSize: 2 });
    clients.push(plugin);
    await waitFor(async () => (await plugin.todos.find().exec()).length === 5, 'the plugin to pull all five');
    expect(pulls.length).toBeGreaterThanOrEqual(3);
    expect(new Set(pulls)).toEqual(new Set([4]));
    // Every author came from its clock's node.
    expect(rowLengths).toEqual([8, 8, 8, 8, 8]);
    expect((await contents(plugin.todos)).map((doc) => doc.title)).toEqual(docs.map((_, i) => `title ${i}`));
    const stored = await plugin.todos.storageInstance.findDocumentsById(docs.map((doc) => doc.documentId), false);
    expect(stored.map((doc) => (doc._meta as Record<string, unknown[]>).rxofflinesync?.slice(0, 4))).toEqual(
      (await storedEvents()).map((event) => [event.seq, event.id, event.hlc, event.clientId]),
    );
  });
});
