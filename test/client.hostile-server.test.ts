/** The client must not obey a server that sends malformed messages: it reports an error and applies nothing. */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from 'socket.io';
import { z } from 'zod';
import { afterEach, describe, expect, it } from 'vitest';
import { sequenceSchema } from '../src/shared/protocol.js';
import { bareSyncIo, startClient, waitFor, type TestClient } from './helpers.js';

let httpServer: HttpServer | undefined;
let io: Server | undefined;
const clients: TestClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await io?.close();
  httpServer = undefined;
});

const goodEvent = {
  id: 'evt-00000001', collection: 'todos', documentId: 'x', op: 'insert', data: { id: 'x', title: 't', done: false },
  hlc: '001700000000000-000000-s', seq: 1, clientId: 'other',
};

/** A socket.io server on a free loopback port, set up by `configure`; resolves with its URL. */
async function fakeServer(configure: (server: Server) => void): Promise<string> {
  httpServer = createServer();
  io = bareSyncIo(httpServer);
  configure(io);
  await new Promise<void>((resolve) => httpServer!.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
}

/**
 * Refuses every handshake in a version but `speaks` the way a server of an
 * earlier release did; `named`: naming the versions it speaks, as releases
 * since protocol 2 do (builds before refused without naming them). Records
 * each version asked.
 */
function speakOnly(server: Server, speaks: readonly number[], handshakes: unknown[] = [], named = true): void {
  server.use((socket, next) => {
    const version = (socket.handshake.auth as { protocolVersion?: unknown }).protocolVersion;
    handshakes.push(version);
    if (speaks.includes(version as number)) return next();
    const message = `protocol version ${String(version)} is not supported; this server speaks ${speaks.join(', ')}`;
    next(Object.assign(new Error(message), { data: { code: 'UNSUPPORTED_PROTOCOL', message, ...(named ? { details: { supported: speaks } } : {}) } }));
  });
}

/**
 * A fake sync server whose pull answer and live messages are given by the
 * test, in the protocol version `speaks` (the client falls back to it):
 * 2 for answers with events as objects, 3 for pull pages of rows.
 */
function hostileServer(pullReply: unknown | ((call: number) => unknown), live?: unknown, speaks = 2): Promise<string> {
  let calls = 0;
  return fakeServer((server) => {
    speakOnly(server, [speaks]);
    server.on('connection', (socket) => {
      socket.on('sync:subscribe', (_message, ack) => ack({ ok: true, collections: ['todos'] }));
      socket.on('sync:push', (_message, ack) => ack({ ok: true, results: [] }));
      socket.on('sync:pull', (_message, ack) => {
        ack(typeof pullReply === 'function' ? pullReply(++calls) : pullReply);
        if (live !== undefined) socket.emit('sync:events', live);
      });
    });
  });
}

/** A good protocol 3 pull page of one event; `row` and `page` change it. */
const goodPage = (row: (good: unknown[]) => unknown[] = (good) => good, page: Record<string, unknown> = {}) => ({
  ok: true,
  collections: ['todos'],
  nodes: ['s'],
  events: [row(['evt-00000001', 0, 'x', 'insert', { id: 'x', title: 't', done: false }, '001700000000000-000000', 0, 1, 'other'])],
  checkpoint: 1,
  hasMore: false,
  ...page,
});

/** What the client is sent, what it was sent live (if anything), and the protocol version the fake server speaks. */
const cases: [string, unknown, unknown?, number?][] = [
  ['a pull reply with wrong types', { ok: true, events: 'nope', checkpoint: 'x', hasMore: 1 }],
  ['an event with an unknown operation', { ok: true, events: [{ ...goodEvent, op: 'explode' }], checkpoint: 1, hasMore: false }],
  ['an event for a collection it did not ask for', { ok: true, events: [{ ...goodEvent, collection: 'secrets' }], checkpoint: 1, hasMore: false }],
  ['a checkpoint that moves backwards', { ok: true, events: [], checkpoint: -5, hasMore: false }],
  ['an event without an author whose clock\'s node is no client id', { ok: true, events: [{ ...goodEvent, clientId: undefined, hlc: `001700000000000-000000-${'x'.repeat(200)}` }], checkpoint: 1, hasMore: false }],
  ['a live message that is not a list of events', { ok: true, events: [], checkpoint: 0, hasMore: false }, { events: [{ garbage: true }] }],
  ['a live event for a collection it did not ask for', { ok: true, events: [], checkpoint: 0, hasMore: false }, { events: [{ ...goodEvent, collection: 'secrets' }] }],
  ['a pull answer in protocol 2\'s form where 3 was spoken', { ok: true, events: [goodEvent], checkpoint: 1, hasMore: false }, undefined, 3],
  ['a pull page row naming a collection the page does not list', goodPage((row) => row.with(1, 1)), undefined, 3],
  ['a pull page row naming a clock node the page does not list', goodPage((row) => row.with(6, 1)), undefined, 3],
  ['a pull page row with a whole clock where its time belongs', goodPage((row) => row.with(5, '001700000000000-000000-s')), undefined, 3],
  ['a pull page row with more fields than a row has', goodPage((row) => [...row, 'extra']), undefined, 3],
  ['a pull page row with an unknown operation', goodPage((row) => row.with(3, 'explode')), undefined, 3],
  ['a pull page listing a collection it did not ask for', goodPage(undefined, { collections: ['secrets'] }), undefined, 3],
  ['a pull page whose clock node holds a line break (no whole clock may)', goodPage(undefined, { nodes: ['evil\nnode'] }), undefined, 3],
  ['a pull page row without an author whose clock\'s node is no client id', goodPage((row) => row.slice(0, 8), { nodes: ['x'.repeat(200)] }), undefined, 3],
];

describe('a client facing a malformed server', () => {
  for (const [what, pullReply, live, speaks] of cases) {
    it(`rejects ${what}: error status, nothing applied`, async () => {
      const url = await hostileServer(pullReply, live, speaks);
      const client = await startClient(url, { autoSync: false });
      clients.push(client);
      const errors: string[] = [];
      client.sync.status$.subscribe((status) => status.error && errors.push(status.error.code));
      const result = await client.sync.syncNow();
      if (live === undefined) {
        expect(result.success).toBe(false);
        expect(result.error?.code).toBe('INVALID_MESSAGE');
      }
      await waitFor(() => errors.includes('INVALID_MESSAGE'), 'an INVALID_MESSAGE status');
      expect(await client.todos.count().exec()).toBe(0);
    });
  }
});

it('applies a good protocol 3 pull page, the one each refused page above differs from in one field', async () => {
  const url = await hostileServer(goodPage(), undefined, 3);
  const client = await startClient(url, { autoSync: false });
  clients.push(client);
  expect(await client.sync.syncNow()).toMatchObject({ success: true, syncedEvents: 1 });
  expect((await client.todos.findOne('x').exec())?.title).toBe('t');
  expect(client.sync.getStatus().error).toBeNull();
});

it('rejects a pull answer whose checkpoint is behind the one it already has: checkpoints only move forward', async () => {
  const url = await hostileServer((call: number) =>
    call === 1 ? { ok: true, events: [{ ...goodEvent, seq: 5 }], checkpoint: 5, hasMore: false } : { ok: true, events: [{ ...goodEvent, documentId: 'y', data: { id: 'y', title: 'old', done: false }, seq: 2 }], checkpoint: 2, hasMore: false },
  );
  const client = await startClient(url, { autoSync: false });
  clients.push(client);
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
  expect(await client.sync.syncNow()).toMatchObject({ success: false, error: { code: 'INVALID_MESSAGE', message: expect.stringContaining('back') } });
  expect((await client.todos.find().exec()).map((doc) => doc.id)).toEqual(['x']);
});

/**
 * A server of an earlier release: it speaks protocol 1 only, refusing any
 * other version the way that release did (naming the versions it speaks),
 * and took single sequences only in a pull's `have` (not ranges), under that
 * same version; it accepts every push, answering in protocol 1.
 */
function previousReleaseServer(haves: unknown[], handshakes: unknown[] = [], { named = true } = {}): Promise<string> {
  let seq = 0;
  return fakeServer((server) => {
    speakOnly(server, [1], handshakes, named);
    server.on('connection', (socket) => {
      socket.on('sync:subscribe', (_m, ack) => ack({ ok: true, collections: ['todos'] }));
      socket.on('sync:push', (m: { events: { id: string }[] }, ack) => ack({ ok: true, results: m.events.map((e) => ({ id: e.id, status: 'accepted', seq: ++seq })) }));
      socket.on('sync:pull', (m: { checkpoint: number; have?: unknown }, ack) => {
        haves.push(m.have);
        if (!z.array(sequenceSchema).max(5000).optional().safeParse(m.have).success) {
          return ack({ ok: false, error: { code: 'INVALID_MESSAGE', message: 'pull message: have: expected number' } });
        }
        ack({ ok: true, events: [], checkpoint: seq, hasMore: false });
      });
    });
  });
}

it('a server of an earlier release, which takes single sequences only in a pull\'s have, is asked again with them and from then on', async () => {
  const haves: unknown[] = [];
  const handshakes: unknown[] = [];
  const url = await previousReleaseServer(haves, handshakes);
  const client = await startClient(url, { autoSync: false, retry: { maxRetries: 0, retryDelay: 50, useExponentialBackoff: false } });
  clients.push(client);
  await client.todos.bulkInsert([{ id: 'a', title: 'a', done: false }, { id: 'b', title: 'b', done: false }]);
  await waitFor(() => client.sync.getStatus().pendingEvents === 2, 'both writes logged');
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
  expect(haves).toEqual([[[1, 2]], [1, 2]]);
  await client.todos.bulkInsert([{ id: 'c', title: 'c', done: false }, { id: 'd', title: 'd', done: false }]);
  await waitFor(() => client.sync.getStatus().pendingEvents === 2, 'the later writes logged');
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
  expect(haves.slice(2)).toEqual([[3, 4]]);
  // It was asked in protocol 4 once, refused it, and was spoken to in protocol 1 (the one it named) from then on.
  expect(handshakes).toEqual([4, 1]);
  expect(client.sync.getStatus().error).toBeNull();
});

it('a server that refuses protocols 4, 3 and 2 without naming the versions it speaks is spoken to in 1', async () => {
  const handshakes: unknown[] = [];
  const url = await previousReleaseServer([], handshakes, { named: false });
  const client = await startClient(url, { autoSync: false });
  clients.push(client);
  await client.todos.insert({ id: 'a', title: 'a', done: false });
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
  // One version down at a time.
  expect(handshakes).toEqual([4, 3, 2, 1]);
});

it('a server that refuses every version it is asked in, naming the other, gets a few handshakes and an error, not a storm', async () => {
  const handshakes: unknown[] = [];
  const url = await fakeServer((server) =>
    server.use((socket, next) => {
      const version = (socket.handshake.auth as { protocolVersion?: unknown }).protocolVersion;
      handshakes.push(version);
      const message = `protocol version ${String(version)} is not supported`;
      next(Object.assign(new Error(message), { data: { code: 'UNSUPPORTED_PROTOCOL', message, details: { supported: version === 1 ? [2] : [1] } } }));
    }),
  );
  const client = await startClient(url, { autoSync: false, retry: { maxRetries: 0, retryDelay: 200, useExponentialBackoff: false } });
  clients.push(client);
  expect(await client.sync.syncNow()).toMatchObject({ success: false, error: { code: 'UNSUPPORTED_PROTOCOL' } });
  await waitFor(() => client.sync.getStatus().error?.code === 'UNSUPPORTED_PROTOCOL', 'the refusal to show in the status');
  await new Promise((resolve) => setTimeout(resolve, 500));
  // Down to 1 once, then only retries in 1, with the retry delay between them.
  expect(handshakes.slice(0, 2)).toEqual([4, 1]);
  expect(handshakes.slice(2).every((version) => version === 1)).toBe(true);
  expect(handshakes.length).toBeLessThan(10);
});

/** A server that takes a push and answers it as `answer` says; `protocol1Only`: refusing the newer versions first, so that the client speaks 1. */
function pushAnswerServer(answer: (events: { id: string }[]) => unknown[], protocol1Only = false): Promise<string> {
  return fakeServer((server) => {
    if (protocol1Only) speakOnly(server, [1]);
    server.on('connection', (socket) => {
      socket.on('sync:subscribe', (_m, ack) => ack({ ok: true, collections: ['todos'] }));
      socket.on('sync:push', (m: { events: { id: string }[] }, ack) => ack({ ok: true, results: answer(m.events) }));
      socket.on('sync:pull', (_m, ack) => ack({ ok: true, events: [], checkpoint: 0, hasMore: false }));
    });
  });
}

describe('a push answer that does not match the push is refused, and nothing is taken as acknowledged', () => {
  const pushTwo = async (url: string) => {
    const client = await startClient(url, { autoSync: false });
    clients.push(client);
    await client.todos.bulkInsert([{ id: 'a', title: 'a', done: false }, { id: 'b', title: 'b', done: false }]);
    await waitFor(() => client.sync.getStatus().pendingEvents === 2, 'both writes logged');
    expect(await client.sync.syncNow()).toMatchObject({ success: false, error: { code: 'INVALID_MESSAGE', message: expect.stringContaining('do not match') } });
    expect(client.sync.getStatus().pendingEvents).toBe(2);
  };

  it('protocol 2 and later: one sequence for two events', async () => {
    await pushTwo(await pushAnswerServer(() => [1]));
  });

  it('protocol 1: results naming other events', async () => {
    await pushTwo(await pushAnswerServer((events) => events.map((_, i) => ({ id: `another-event-${i}`, status: 'accepted', seq: i + 1 })), true));
  });
});

