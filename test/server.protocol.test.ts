/**
 * The sync server over real sockets on loopback, spoken to by hand-written
 * (raw) clients: authentication, push and pull, paging, live broadcast, and
 * bad input that is answered, not obeyed (DESIGN.md invariant 9).
 */
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type StoredEvent } from '../src/shared/protocol/index.js';
import {
  collectLive,
  connectError,
  nextServerError,
  pull,
  push,
  rawEvent,
  rawSocket,
  request,
  sleep,
  startServer,
  uniqueName,
  waitFor,
  type TestServer,
} from './helpers.js';

let server: TestServer | undefined;
const sockets: Socket[] = [];

async function open(auth: Record<string, unknown> = {}) {
  const socket = await rawSocket(server!.url, auth);
  sockets.push(socket);
  return socket;
}

const stored = () => server!.server.getStorage().countEvents();

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  await server?.stop();
  server = undefined;
});

describe('authentication', () => {
  const authenticate = (_socket: unknown, token: string | undefined) => (token === 'good' ? { id: 'alice' } : null);

  it('accepts a good token and refuses a bad or missing one with UNAUTHENTICATED', async () => {
    server = await startServer({ authenticate });
    const socket = await open({ token: 'good' });
    expect(socket.connected).toBe(true);

    const bad = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'c1', token: 'forged' });
    expect(bad.data).toMatchObject({ code: 'UNAUTHENTICATED' });
    expect(bad.data!.message).toMatch(/token was not accepted/);

    const missing = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'c1' });
    expect(missing.data?.code).toBe('UNAUTHENTICATED');
    expect(server.server.getClientsCount()).toBe(1);
  });

  it('refuses with the reason when authenticate throws', async () => {
    server = await startServer({
      authenticate: () => {
        throw new Error('signature invalid');
      },
    });
    const error = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'c1', token: 'x' });
    expect(error.data?.code).toBe('UNAUTHENTICATED');
    expect(error.data?.message).toMatch(/signature invalid/);
  });

  it('refuses another protocol version with UNSUPPORTED_PROTOCOL, and a malformed handshake with INVALID_MESSAGE', async () => {
    server = await startServer({ authenticate });
    const future = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION + 1, clientId: 'c1', token: 'good' });
    // It names the version it speaks.
    expect(future.data).toMatchObject({ code: 'UNSUPPORTED_PROTOCOL', details: { supported: [PROTOCOL_VERSION] } });
    expect(future.data!.message).toContain(`speaks protocol version ${PROTOCOL_VERSION}`);

    const noClientId = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, token: 'good' });
    expect(noClientId.data?.code).toBe('INVALID_MESSAGE');
    expect(noClientId.data?.message).toContain('clientId');
    expect(server.server.getClientsCount()).toBe(0);
  });
});

describe('push and pull', () => {
  it('events pushed on one connection are pulled on another, in order, with server sequences', async () => {
    server = await startServer();
    const writer = await open();
    const reader = await open();
    const events = ['a', 'b', 'c'].map((documentId) => rawEvent({ documentId }));
    const pushed = await push(writer, events);
    expect(pushed.ok).toBe(true);
    expect(pushed.results).toEqual([1, 2, 3]);

    const pulled = await pull(reader, { checkpoint: 0, collections: ['todos'] });
    expect(pulled).toMatchObject({ ok: true, hasMore: false });
    expect(pulled.events.map((e: StoredEvent) => e.id)).toEqual(events.map((e) => e.id));
    const seqs = pulled.events.map((e: StoredEvent) => e.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(pulled.checkpoint).toBe(seqs[2]);
    expect(pulled.events[0].data).toEqual(events[0]!.data);

    const retry = await push(writer, [events[0]!]);
    // A retry is answered with the sequence stored first.
    expect(retry.results).toEqual([seqs[0]]);
    expect(await stored()).toBe(3);
  });

  it('replays in pages: limit and hasMore give every event exactly once', async () => {
    server = await startServer({ maxPullLimit: 20 });
    const writer = await open();
    const events = Array.from({ length: 25 }, (_, i) => rawEvent({ documentId: `p${i}` }));
    await push(writer, events);

    const reader = await open();
    const seen: string[] = [];
    const pages: { size: number; hasMore: boolean }[] = [];
    let checkpoint = 0;
    for (;;) {
      const page = await pull(reader, { checkpoint, collections: ['todos'], limit: 10 });
      seen.push(...page.events.map((e: StoredEvent) => e.id));
      pages.push({ size: page.events.length, hasMore: page.hasMore });
      checkpoint = page.checkpoint;
      if (!page.hasMore) break;
    }
    expect(seen).toEqual(events.map((e) => e.id));
    expect(pages).toEqual([
      { size: 10, hasMore: true },
      { size: 10, hasMore: true },
      { size: 5, hasMore: false },
    ]);
    const after = await pull(reader, { checkpoint, collections: ['todos'], limit: 10 });
    expect(after).toMatchObject({ ok: true, events: [], hasMore: false, checkpoint });

    // A limit above maxPullLimit is capped, not obeyed.
    const capped = await pull(reader, { checkpoint: 0, collections: ['todos'], limit: 1_000_000 });
    expect(capped.events).toHaveLength(20);
    expect(capped.hasMore).toBe(true);
  });

  it('a pull leaves out the sequences it says it has, named one by one or as ranges, and still moves past them', async () => {
    server = await startServer();
    const writer = await open();
    const pushed = await push(writer, Array.from({ length: 8 }, (_, i) => rawEvent({ documentId: `h${i}` })));
    const seqs: number[] = pushed.results;
    const reader = await open();
    const having = (have: unknown[]) => pull(reader, { checkpoint: 0, collections: ['todos'], have });
    // A reversed range names nothing; a range far past the last sequence is no problem.
    const page = await having([seqs[0], [seqs[2], seqs[4]], [seqs[7], seqs[5]], [seqs[6], Number.MAX_SAFE_INTEGER]]);
    expect(page.events.map((event: StoredEvent) => event.documentId)).toEqual(['h1', 'h5']);
    expect(page.checkpoint).toBe(seqs[7]);
    const malformed = await having([[seqs[0]]]);
    expect(malformed).toMatchObject({ ok: false, error: { code: 'INVALID_MESSAGE' } });
  });

  it('live events reach connections subscribed to the collection and no one else', async () => {
    server = await startServer();
    const writer = await open();
    const todosReader = await open();
    const notesReader = await open();
    const bystander = await open();
    const todosLive = collectLive(todosReader);
    const notesLive = collectLive(notesReader);
    const bystanderLive = collectLive(bystander);
    const writerLive = collectLive(writer);
    expect(await request(todosReader, MESSAGE.subscribe, { collections: ['todos'] })).toEqual({ ok: true, collections: ['todos'] });
    expect(await request(notesReader, MESSAGE.subscribe, { collections: ['notes'] })).toMatchObject({ ok: true });
    await request(writer, MESSAGE.subscribe, { collections: ['todos', 'notes'] });

    const todo = rawEvent({ documentId: 't1' });
    await push(writer, [todo]);
    await waitFor(() => todosLive.length === 1, 'the todos subscriber to get the event');
    expect(todosLive[0]).toMatchObject({ id: todo.id, collection: 'todos', documentId: 't1' });
    expect(todosLive[0]!.seq).toBeGreaterThan(0);

    // Broadcasts on one socket arrive in order: once the later notes event is in, the todos one would have been too.
    await push(writer, [rawEvent({ documentId: 'n1', collection: 'notes' })]);
    await waitFor(() => notesLive.length === 1, 'the notes subscriber to get the notes event');
    expect(notesLive.map((e) => e.collection)).toEqual(['notes']);
    expect(todosLive).toHaveLength(1);
    expect(bystanderLive).toHaveLength(0);
    expect(writerLive).toHaveLength(0);

    // Subscribing replaces the previous subscription.
    await request(todosReader, MESSAGE.subscribe, { collections: ['notes'] });
    await push(writer, [rawEvent({ documentId: 't2' })]);
    await push(writer, [rawEvent({ documentId: 'n2', collection: 'notes' })]);
    await waitFor(() => todosLive.length === 2, 'the re-subscribed reader to get the notes event');
    expect(todosLive.map((e) => e.documentId)).toEqual(['t1', 'n2']);
  });

  it('a pull sent right behind a subscription, without waiting for its answer, reads only once the socket is in the rooms', async () => {
    server = await startServer();
    const storage = server.server.getStorage();
    const rooms = server.server.getIo().of('/').adapter.rooms;
    const reader = await open();
    await request(reader, MESSAGE.subscribe, { collections: ['notes'] });
    const inRoomAtRead: boolean[] = [];
    const getChangesAfter = storage.getChangesAfter.bind(storage);
    storage.getChangesAfter = (checkpoint, options) => {
      inRoomAtRead.push(rooms.get('collection:todos')?.has(reader.id!) ?? false);
      return getChangesAfter(checkpoint, options);
    };
    // A new subscription that also leaves a collection, and the pull, sent back to back.
    const [subscribed, pulled] = await Promise.all([
      request(reader, MESSAGE.subscribe, { collections: ['todos'] }),
      pull(reader, { checkpoint: 0, collections: ['todos'] }),
    ]);
    expect(subscribed).toEqual({ ok: true, collections: ['todos'] });
    expect(pulled).toMatchObject({ ok: true });
    expect(inRoomAtRead).toEqual([true]);
    expect(rooms.get('collection:notes')?.has(reader.id!) ?? false).toBe(false);
  });

  it('of two subscriptions sent back to back, the later one decides the rooms', async () => {
    server = await startServer();
    const rooms = server.server.getIo().of('/').adapter.rooms;
    const reader = await open();
    await request(reader, MESSAGE.subscribe, { collections: ['todos', 'notes'] });
    await Promise.all([
      request(reader, MESSAGE.subscribe, { collections: ['todos'] }),
      request(reader, MESSAGE.subscribe, { collections: ['todos', 'notes'] }),
    ]);
    expect(rooms.get('collection:notes')?.has(reader.id!) ?? false).toBe(true);
    expect(rooms.get('collection:todos')?.has(reader.id!) ?? false).toBe(true);
  });

  it('a push nobody else is subscribed to builds no live message; once a reader subscribes, it gets the next one', async () => {
    server = await startServer();
    const adapter = server.server.getIo().of('/').adapter;
    const broadcasts: string[][] = [];
    const broadcast = adapter.broadcast.bind(adapter);
    adapter.broadcast = (packet, options) => {
      broadcasts.push([...options.rooms]);
      broadcast(packet, options);
    };
    const writer = await open();
    await request(writer, MESSAGE.subscribe, { collections: ['todos'] });
    expect(await push(writer, [rawEvent({ documentId: 'alone' })])).toMatchObject({ ok: true });
    expect(broadcasts).toEqual([]);

    const reader = await open();
    const live = collectLive(reader);
    await request(reader, MESSAGE.subscribe, { collections: ['todos'] });
    await push(writer, [rawEvent({ documentId: 'seen' })]);
    await waitFor(() => live.length === 1, 'the new reader to get the event');
    expect(live[0]).toMatchObject({ documentId: 'seen' });
    expect(broadcasts).toEqual([['collection:todos']]);
  });
});

describe('bad input is answered, not obeyed', () => {
  const maxPayloadBytes = 32 * 1024;
  let writer: Socket;
  let reader: Socket;
  let readerLive: StoredEvent[];
  let good = 0;

  async function start() {
    server = await startServer({ collections: ['todos'], maxPayloadBytes, maxEventsPerPush: 10 });
    writer = await open();
    reader = await open();
    readerLive = collectLive(reader);
    await request(reader, MESSAGE.subscribe, { collections: ['todos'] });
    good = 0;
  }

  /** A well-behaved pair keeps syncing, and the server stored only the good events. */
  async function stillSyncing() {
    const event = rawEvent({ documentId: `good-${uniqueName()}` });
    const reply = await push(writer, [event]);
    expect(reply.results[0]).toBeTypeOf('number');
    good++;
    await waitFor(() => readerLive.some((e) => e.id === event.id), 'the good event to reach the reader');
    expect(await stored()).toBe(good);
  }

  it('a malformed message, wrong field types and unknown fields get INVALID_MESSAGE naming the field', async () => {
    await start();
    const hostile = await open();
    await stillSyncing();

    for (const message of ['not an object', null, 42, [], { events: 'all of them' }, { events: [] }]) {
      const reply = await request(hostile, MESSAGE.push, message);
      expect(reply).toMatchObject({ ok: false, error: { code: 'INVALID_MESSAGE' } });
    }
    const row = toPushRows([rawEvent({ documentId: 'x' })], '').events[0]!;
    const wrongOp = await request(hostile, MESSAGE.push, { collections: ['todos'], events: [[...row.slice(0, 3), 5, ...row.slice(4)]] });
    expect(wrongOp.error.code).toBe('INVALID_MESSAGE');
    expect(wrongOp.error.message).toContain('events.0.3');

    const wrongData = await request(hostile, MESSAGE.push, { collections: ['todos'], events: [[...row.slice(0, 4), 'text', row[5]]] });
    expect(wrongData.error.message).toContain('events.0.4');

    const extraField = await request(hostile, MESSAGE.push, { collections: ['todos'], events: [row], seq: 1 });
    expect(extraField.error.code).toBe('INVALID_MESSAGE');

    const wrongCheckpoint = await pull(hostile, { checkpoint: '0', collections: ['todos'] });
    expect(wrongCheckpoint.error).toMatchObject({ code: 'INVALID_MESSAGE' });
    expect(wrongCheckpoint.error.message).toContain('checkpoint');

    const negative = await pull(hostile, { checkpoint: -1, collections: ['todos'], limit: 0 });
    expect(negative.error.code).toBe('INVALID_MESSAGE');

    const badSubscribe = await request(hostile, MESSAGE.subscribe, { collections: ['../etc'] });
    expect(badSubscribe.error.code).toBe('INVALID_MESSAGE');

    expect(hostile.connected).toBe(true);
    await stillSyncing();
    expect(server!.server.getStats().invalidMessages).toBeGreaterThanOrEqual(12);
  });

  it('an unknown message type, and a message without an acknowledgement, get a clear error', async () => {
    await start();
    const hostile = await open();

    const unknown = await request(hostile, 'sync:drop-everything', { please: true });
    expect(unknown).toMatchObject({ ok: false, error: { code: 'INVALID_MESSAGE' } });
    expect(unknown.error.message).toContain('unknown message type "sync:drop-everything"');

    const unanswered = nextServerError(hostile);
    hostile.emit(MESSAGE.push, toPushRows([rawEvent({ documentId: 'no-ack' })], ''));
    expect(await unanswered).toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('acknowledgement') });

    const unknownNoAck = nextServerError(hostile);
    hostile.emit('whatever', 1, 2, 3);
    expect((await unknownNoAck).code).toBe('INVALID_MESSAGE');

    expect(await stored()).toBe(0);
    await stillSyncing();
  });

  it('an oversized payload gets PAYLOAD_TOO_LARGE and the connection stays usable', async () => {
    await start();
    const hostile = await open();
    const big = rawEvent({ documentId: 'big', data: { id: 'big', title: 'x'.repeat(maxPayloadBytes * 1.5), done: false } });
    const reply = await push(hostile, [big]);
    expect(reply).toMatchObject({ ok: false, error: { code: 'PAYLOAD_TOO_LARGE', details: { limit: maxPayloadBytes } } });
    expect(reply.error.message).toContain('maxPayloadBytes');

    // Any message type is measured, not only pushes.
    const bigPull = await pull(hostile, { checkpoint: 0, collections: ['todos'], pad: 'y'.repeat(maxPayloadBytes) });
    expect(bigPull.error.code).toBe('PAYLOAD_TOO_LARGE');

    expect(hostile.connected).toBe(true);
    const after = await push(hostile, [rawEvent({ documentId: 'small' })]);
    expect(after.results[0]).toBeTypeOf('number');
    good++;
    await stillSyncing();
  });

  it('a payload far above the limit drops only that connection; everyone else keeps syncing', async () => {
    await start();
    const hostile = await open();
    const dropped = new Promise<string>((resolve) => hostile.once('disconnect', resolve));
    hostile.emit(MESSAGE.push, toPushRows([rawEvent({ documentId: 'huge', data: { blob: 'z'.repeat(maxPayloadBytes * 3) } })], ''), () => {});
    expect(await dropped).toMatch(/transport (close|error)/);
    await stillSyncing();
    await waitFor(() => server!.server.getClientsCount() === 2, 'the dropped connection to be cleaned up');
  });

  it('too many events in one push get TOO_MANY_EVENTS and nothing is stored', async () => {
    await start();
    const hostile = await open();
    const events = Array.from({ length: 11 }, (_, i) => rawEvent({ documentId: `m${i}` }));
    const reply = await push(hostile, events);
    expect(reply).toMatchObject({ ok: false, error: { code: 'TOO_MANY_EVENTS', details: { count: 11, limit: 10 } } });
    expect(await stored()).toBe(0);
    const ten = await push(hostile, events.slice(0, 10));
    expect(ten.results.every((r: unknown) => typeof r === 'number')).toBe(true);
    good += 10;
    await stillSyncing();
  });

  it('events for an unknown collection are rejected one by one; pulls and subscriptions for it are refused', async () => {
    await start();
    const hostile = await open();
    const secret = rawEvent({ documentId: 's1', collection: 'secrets' });
    const fine = rawEvent({ documentId: 'ok1' });
    const reply = await push(hostile, [secret, fine]);
    expect(reply.ok).toBe(true);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'UNKNOWN_COLLECTION' } });
    expect(reply.results[0].error.message).toContain('"secrets"');
    expect(reply.results[1]).toBeTypeOf('number');
    good++;

    const pulled = await pull(hostile, { checkpoint: 0, collections: ['todos', 'secrets'] });
    expect(pulled.error).toMatchObject({ code: 'UNKNOWN_COLLECTION', details: { collection: 'secrets' } });
    const subscribe = await request(hostile, MESSAGE.subscribe, { collections: ['secrets'] });
    expect(subscribe.error.code).toBe('UNKNOWN_COLLECTION');
    await stillSyncing();
    const all = await server!.server.getStorage().getEventsAfter(0);
    expect(all.some((e) => e.collection === 'secrets')).toBe(false);
  });

  it('a document nested too deeply is rejected, so that it can never poison replies', async () => {
    await start();
    const hostile = await open();
    let nested: unknown = 'bottom';
    for (let i = 0; i < 200; i++) nested = { n: nested };
    const deep = rawEvent({ documentId: 'deep', data: { id: 'deep', nested } });
    const reply = await push(hostile, [deep]);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'INVALID_MESSAGE' } });
    expect(reply.results[0].error.message).toContain('maxDocumentDepth');
    expect(await stored()).toBe(0);
    await stillSyncing();
  });

  it('a NUL character or an unpaired surrogate anywhere in an event is rejected for that event on every storage', async () => {
    await start();
    const hostile = await open();
    const bad = [
      rawEvent({ documentId: 'nul-value', data: { id: 'nul-value', title: 'a\u0000b' } }),
      rawEvent({ documentId: 'nul-key', data: { id: 'nul-key', ['x\u0000']: 1 } }),
      rawEvent({ documentId: 'surrogate', data: { id: 'surrogate', deep: [{ t: 'x\ud800' }] } }),
      rawEvent({ documentId: 'id\udfff' }),
      { ...rawEvent({ documentId: 'patch', op: 'update', baseEventId: null }), patch: [{ op: 'replace' as const, path: '/t\u0000', value: 1 }] },
    ];
    const wellFormed = rawEvent({ documentId: 'fine', data: { id: 'fine', title: 'emoji \ud83d\ude00 is fine' } });
    const reply = await push(hostile, [...bad, wellFormed]);
    expect(reply.results.map((r: number | { status: string }) => (typeof r === 'number' ? 'stored' : r.status))).toEqual([...bad.map(() => 'rejected'), 'stored']);
    for (const result of reply.results.slice(0, bad.length)) {
      expect(result.error).toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('NUL character or an unpaired surrogate') });
    }
    expect(await stored()).toBe(1);
    good++; // the well-formed one counts among the good events stillSyncing checks
    await stillSyncing();
  });

  it('binary data inside a document is rejected for that event, and nothing of it is stored', async () => {
    await start();
    const hostile = await open();
    // socket.io sends Buffers as binary attachments and hands them to the server as Buffers.
    const binary = rawEvent({ documentId: 'binary', data: { id: 'binary', blob: Buffer.from('not json') } as never });
    const reply = await push(hostile, [binary]);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'INVALID_MESSAGE', message: expect.stringContaining('binary data') } });
    expect(await stored()).toBe(0);
    await stillSyncing();
  });

  it('a flood of bad messages from many connections leaves the server serving', async () => {
    await start();
    const hostiles = await Promise.all([1, 2, 3].map(() => open()));
    const replies = await Promise.all(
      hostiles.flatMap((socket) =>
        Array.from({ length: 30 }, (_, i) => request(socket, i % 2 ? MESSAGE.push : `junk-${i}`, { events: [{ id: i }] })),
      ),
    );
    expect(replies.every((reply) => reply.ok === false)).toBe(true);
    await sleep(20);
    await stillSyncing();
  });
});
