/** The client must not obey a server that sends malformed messages: it reports an error and applies nothing. */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from 'socket.io';
import { afterEach, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION } from '../src/shared/protocol/index.js';
import { bareSyncIo, startClient, waitFor, type TestClient, outcome } from './helpers.js';

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

/** A fake sync server whose pull answer and live messages are given by the test. */
function hostileServer(pullReply: unknown | ((call: number) => unknown), live?: unknown): Promise<string> {
  let calls = 0;
  return fakeServer((server) => {
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

/** A good pull page of one event; `row` and `page` change it. */
const goodPage = (row: (good: unknown[]) => unknown[] = (good) => good, page: Record<string, unknown> = {}) => ({
  ok: true,
  collections: ['todos'],
  nodes: ['s'],
  events: [row(['evt-00000001', 0, 'x', 'insert', { id: 'x', title: 't', done: false }, '001700000000000-000000', 0, 1, 'other'])],
  checkpoint: 1,
  hasMore: false,
  ...page,
});

/** A good pull page of no events. */
const emptyPage = goodPage(undefined, { events: [], checkpoint: 0 });

/** What the client is sent, and what it was sent live (if anything). */
const cases: [string, unknown, unknown?][] = [
  ['a pull reply with wrong types', { ok: true, events: 'nope', checkpoint: 'x', hasMore: 1 }],
  ['a checkpoint that moves backwards', goodPage(undefined, { events: [], checkpoint: -5 })],
  ['a live message that is not a list of events', emptyPage, { events: [{ garbage: true }] }],
  ['a live event for a collection it did not ask for', emptyPage, { events: [{ ...goodEvent, collection: 'secrets' }] }],
  ['a pull answer with events as objects, not rows', { ok: true, events: [goodEvent], checkpoint: 1, hasMore: false }],
  ['a pull page row naming a collection the page does not list', goodPage((row) => row.with(1, 1))],
  ['a pull page row naming a clock node the page does not list', goodPage((row) => row.with(6, 1))],
  ['a pull page row with a whole clock where its time belongs', goodPage((row) => row.with(5, '001700000000000-000000-s'))],
  ['a pull page row with more fields than a row has', goodPage((row) => [...row, 'extra'])],
  ['a pull page row with an unknown operation', goodPage((row) => row.with(3, 'explode'))],
  ['a pull page listing a collection it did not ask for', goodPage(undefined, { collections: ['secrets'] })],
  ['a pull page whose clock node holds a line break (no whole clock may)', goodPage(undefined, { nodes: ['evil\nnode'] })],
  ['a pull page row without an author whose clock\'s node is no client id', goodPage((row) => row.slice(0, 8), { nodes: ['x'.repeat(200)] })],
];

describe('a client facing a malformed server', () => {
  for (const [what, pullReply, live] of cases) {
    it(`rejects ${what}: error status, nothing applied`, async () => {
      const url = await hostileServer(pullReply, live);
      const client = await startClient(url, { autoSync: false });
      clients.push(client);
      const errors: string[] = [];
      client.sync.status$.subscribe((status) => status.error && errors.push(status.error.code));
      const result = await outcome(client.sync.syncNow());
      if (live === undefined) {
        expect(result.success).toBe(false);
        expect(result.error?.code).toBe('INVALID_MESSAGE');
      }
      await waitFor(() => errors.includes('INVALID_MESSAGE'), 'an INVALID_MESSAGE status');
      expect(await client.todos.count().exec()).toBe(0);
    });
  }
});

it('applies a good pull page, the one each refused page above differs from in one field', async () => {
  const url = await hostileServer(goodPage());
  const client = await startClient(url, { autoSync: false });
  clients.push(client);
  expect(await client.sync.syncNow()).toMatchObject({ success: true, syncedEvents: 1 });
  expect((await client.todos.findOne('x').exec())?.title).toBe('t');
  expect(client.sync.getStatus().error).toBeNull();
});

it('rejects a pull answer whose checkpoint is behind the one it already has: checkpoints only move forward', async () => {
  const url = await hostileServer((call: number) =>
    call === 1
      ? goodPage((row) => row.with(7, 5), { checkpoint: 5 })
      : goodPage((row) => row.with(2, 'y').with(4, { id: 'y', title: 'old', done: false }).with(7, 2), { checkpoint: 2 }),
  );
  const client = await startClient(url, { autoSync: false });
  clients.push(client);
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
  await expect(client.sync.syncNow()).rejects.toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('back') });
  expect((await client.todos.find().exec()).map((doc) => doc.id)).toEqual(['x']);
});

it('a server that refuses the version the client speaks gets a handshake and an error, neither another version nor a storm', async () => {
  const handshakes: unknown[] = [];
  const url = await fakeServer((server) =>
    server.use((socket, next) => {
      const version = (socket.handshake.auth as { protocolVersion?: unknown }).protocolVersion;
      handshakes.push(version);
      const message = `protocol version ${String(version)} is not supported; this server speaks protocol version 5`;
      next(Object.assign(new Error(message), { data: { code: 'UNSUPPORTED_PROTOCOL', message, details: { supported: [5] } } }));
    }),
  );
  const client = await startClient(url, { autoSync: false, retry: { maxRetries: 0, retryDelay: 100, useExponentialBackoff: false } });
  clients.push(client);
  await expect(client.sync.syncNow()).rejects.toMatchObject({ code: 'UNSUPPORTED_PROTOCOL' });
  await waitFor(() => client.sync.getStatus().error?.code === 'UNSUPPORTED_PROTOCOL', 'the refusal to show in the status');
  await new Promise((resolve) => setTimeout(resolve, 1000));
  // The same refusal would come again: the next attempt waits far longer than the retry delay.
  expect(new Set(handshakes)).toEqual(new Set([PROTOCOL_VERSION]));
  expect(handshakes.length).toBeLessThanOrEqual(2);
});

/** A server that takes a push and answers it as `answer` says. */
function pushAnswerServer(answer: (events: unknown[][]) => unknown[]): Promise<string> {
  return fakeServer((server) => {
    server.on('connection', (socket) => {
      socket.on('sync:subscribe', (_m, ack) => ack({ ok: true, collections: ['todos'] }));
      socket.on('sync:push', (m: { events: unknown[][] }, ack) => ack({ ok: true, results: answer(m.events) }));
      socket.on('sync:pull', (_m, ack) => ack(emptyPage));
    });
  });
}

describe('a push answer that does not match the push is refused, and nothing is taken as acknowledged', () => {
  const pushTwo = async (url: string) => {
    const client = await startClient(url, { autoSync: false });
    clients.push(client);
    await client.todos.bulkInsert([{ id: 'a', title: 'a', done: false }, { id: 'b', title: 'b', done: false }]);
    await waitFor(() => client.sync.getStatus().pendingEvents === 2, 'both writes logged');
    await expect(client.sync.syncNow()).rejects.toMatchObject({ code: 'INVALID_MESSAGE', message: expect.stringContaining('do not match') });
    expect(client.sync.getStatus().pendingEvents).toBe(2);
  };

  it('one sequence for two events', async () => {
    await pushTwo(await pushAnswerServer(() => [1]));
  });
});

