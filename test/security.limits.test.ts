/**
 * Limits: messages per window (per connection and per user), connections per
 * user, and dead connections. Each triggers with a clear error, and the
 * connection or the server recovers afterwards.
 */
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { MESSAGE, PROTOCOL_VERSION } from '../src/shared/protocol/index.js';
import type { ClientInfo } from '../src/server/index.js';
import {
  connectError,
  nextServerError,
  push,
  rawEvent,
  rawSocket,
  request,
  silentPollingClient,
  sleep,
  startClient,
  startServer,
  waitFor,
  type TestClient,
  type TestServer,
} from './helpers.js';

let server: TestServer | undefined;
const sockets: Socket[] = [];
const clients: TestClient[] = [];

/** Tokens are user names; a short pause makes parallel handshakes overlap. */
const authenticate = async (_socket: unknown, token: string | undefined) => {
  await sleep(Math.random() * 20);
  return token ? { id: token } : null;
};

async function as(token?: string) {
  const socket = await rawSocket(server!.url, token ? { token } : {});
  sockets.push(socket);
  return socket;
}

const pull = (socket: Socket) => request(socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

describe('rate limit', () => {
  it('per connection: over the limit a message is answered RATE_LIMITED with the configured text, and the window resets', async () => {
    const windowMs = 400;
    server = await startServer({ rateLimit: { windowMs, max: 5, message: 'easy, tiger' } });
    const noisy = await as();
    const quiet = await as();
    for (let i = 0; i < 5; i++) expect((await pull(noisy)).ok).toBe(true);
    const limited = await pull(noisy);
    expect(limited).toEqual({
      ok: false,
      error: {
        code: 'RATE_LIMITED',
        message: 'easy, tiger',
        details: { scope: 'connection', limit: 5, windowMs, retryAfterMs: expect.any(Number) },
      },
    });
    expect(limited.error.details.retryAfterMs).toBeLessThanOrEqual(windowMs);
    // Pushes are refused too, before anything is stored; a message without an ack hears it on sync:error.
    expect((await push(noisy, [rawEvent({ documentId: 'x' })])).error.code).toBe('RATE_LIMITED');
    const error = nextServerError(noisy);
    noisy.emit(MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });
    expect((await error).code).toBe('RATE_LIMITED');
    expect(await server.server.getStorage().countEvents()).toBe(0);

    // Another connection is not affected; the noisy one stays connected and recovers after the window.
    expect((await pull(quiet)).ok).toBe(true);
    expect(noisy.connected).toBe(true);
    await sleep(limited.error.details.retryAfterMs + 20);
    expect((await pull(noisy)).ok).toBe(true);
    expect((await push(noisy, [rawEvent({ documentId: 'y' })])).results[0]).toBeTypeOf('number');
  });

  it("per user: all of a user's connections share maxPerUser; other users are not affected", async () => {
    server = await startServer({ authenticate, rateLimit: { windowMs: 500, max: 100, maxPerUser: 6 } });
    const [a1, a2, bob] = [await as('alice'), await as('alice'), await as('bob')];
    for (let i = 0; i < 3; i++) {
      expect((await pull(a1)).ok).toBe(true);
      expect((await pull(a2)).ok).toBe(true);
    }
    const limited = await pull(a1);
    expect(limited.error).toMatchObject({ code: 'RATE_LIMITED', details: { scope: 'user', limit: 6 } });
    expect((await pull(a2)).error.code).toBe('RATE_LIMITED');
    // A fresh connection does not reset a user's count.
    const a3 = await as('alice');
    expect((await pull(a3)).error.code).toBe('RATE_LIMITED');
    for (let i = 0; i < 6; i++) expect((await pull(bob)).ok).toBe(true);

    await sleep(limited.error.details.retryAfterMs + 20);
    expect((await pull(a1)).ok).toBe(true);
    expect((await pull(a3)).ok).toBe(true);
  });

  it('maxPerUser defaults to max: a user does not get more by opening more connections', async () => {
    server = await startServer({ authenticate, rateLimit: { windowMs: 5000, max: 4 } });
    const [a1, a2] = [await as('alice'), await as('alice')];
    for (let i = 0; i < 2; i++) {
      expect((await pull(a1)).ok).toBe(true);
      expect((await pull(a2)).ok).toBe(true);
    }
    expect((await pull(a2)).error.details).toMatchObject({ scope: 'user', limit: 4 });
  });

  it('the real client rides out the limit: its writes all arrive once the window passes', async () => {
    server = await startServer({ rateLimit: { windowMs: 300, max: 4 } });
    // A burst of failed runs uses up the client's retries; its periodic sync then picks the writes up.
    const writer = await startClient(server.url, { syncInterval: 250 });
    const reader = await startClient(server.url);
    clients.push(writer, reader);
    await waitFor(() => writer.sync.getStatus().connected && reader.sync.getStatus().connected, 'both connected');
    const errors = new Set<string>();
    writer.sync.status$.subscribe((status) => status.error && errors.add(status.error.code));
    // One write at a time, so that each is its own push message.
    for (let i = 0; i < 12; i++) {
      await writer.todos.insert({ id: `r${i}`, title: `write ${i}`, done: false });
      await sleep(15);
    }
    await waitFor(async () => (await reader.todos.count().exec()) === 12, 'the reader to get all 12 writes');
    expect(errors).toContain('RATE_LIMITED');
    expect(await server.server.getStorage().countEvents()).toBe(12);
  });
});

describe('connections per user', () => {
  it('refuses connections over maxConnectionsPerUser with TOO_MANY_CONNECTIONS, and admits again when one closes', async () => {
    server = await startServer({ authenticate, maxConnectionsPerUser: 2 });
    const first = await as('alice');
    await as('alice');
    const refused = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'c3', token: 'alice' });
    expect(refused.data).toMatchObject({ code: 'TOO_MANY_CONNECTIONS', details: { limit: 2 } });
    expect(refused.data!.message).toContain('maxConnectionsPerUser');
    await as('bob');
    expect(server.server.getClientsCount()).toBe(3);

    first.close();
    await waitFor(() => server!.server.getClientsCount() === 2, 'the closed connection to be gone');
    const again = await as('alice');
    expect((await pull(again)).ok).toBe(true);
  });

  it('parallel handshakes cannot slip past the limit together', async () => {
    server = await startServer({ authenticate, maxConnectionsPerUser: 2 });
    const attempts = await Promise.allSettled(Array.from({ length: 8 }, () => as('alice')));
    const admitted = attempts.filter((attempt) => attempt.status === 'fulfilled');
    const refusals = attempts.filter((attempt): attempt is PromiseRejectedResult => attempt.status === 'rejected');
    expect(admitted).toHaveLength(2);
    expect(refusals.every((attempt) => (attempt.reason as { data?: { code: string } }).data?.code === 'TOO_MANY_CONNECTIONS')).toBe(true);
    expect(server.server.getClientsCount()).toBe(2);
  });

  it('the real client is refused while the user is at the limit and connects once a slot frees', async () => {
    server = await startServer({ authenticate, maxConnectionsPerUser: 1 });
    const holder = await as('alice');
    const client = await startClient(server.url, { authToken: 'alice' });
    clients.push(client);
    await waitFor(() => client.sync.getStatus().error?.code === 'TOO_MANY_CONNECTIONS', 'the refusal to show in status');
    expect(client.sync.getStatus().connected).toBe(false);
    await client.todos.insert({ id: 'waiting', title: 'written while refused', done: false });
    holder.close();
    await waitFor(() => client.sync.getStatus().connected, 'the client to get the freed slot', 15_000);
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the pending write to arrive');
  });
});

describe('heartbeat and client timeout', () => {
  it('a connection that stops answering pings is dropped within heartbeatInterval + clientTimeout; live ones stay', async () => {
    const gone: (ClientInfo & { reason: string })[] = [];
    server = await startServer({ authenticate, heartbeatInterval: 100, clientTimeout: 100, maxConnectionsPerUser: 1, onClientDisconnect: (client) => gone.push(client) });
    const healthy = await as('bob');
    await silentPollingClient(server.url, { token: 'alice' });
    await waitFor(() => server!.server.getClientsCount() === 2, 'both connected');
    // The dead connection holds alice's only slot for now.
    expect((await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'x', token: 'alice' })).data?.code).toBe('TOO_MANY_CONNECTIONS');

    // 200 ms of heartbeat; the bound leaves room for a loaded 2-core CI machine, and is still far below socket.io's defaults (45 s).
    await waitFor(() => server!.server.getClientsCount() === 1, 'the silent client to be dropped', 3000);
    expect(gone).toHaveLength(1);
    expect(gone[0]).toMatchObject({ reason: 'ping timeout', user: { id: 'alice' } });

    // The live connection answered every ping meanwhile, and the slot is free again.
    await sleep(400);
    expect(healthy.connected).toBe(true);
    expect((await pull(healthy)).ok).toBe(true);
    expect((await as('alice')).connected).toBe(true);
  });
});
