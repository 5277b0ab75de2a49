/**
 * Token expiry: `authenticate` may return `{ user, expiresAt }`; at that time
 * the server says TOKEN_EXPIRED and disconnects, and the client comes back
 * with a fresh token from its authToken function without losing a write.
 */
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MESSAGE, PROTOCOL_VERSION } from '../src/shared/protocol/index.js';
import { runAt, sessionOf } from '../src/server/auth.js';
import {
  connectError,
  contents,
  nextServerError,
  rawSocket,
  request,
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

afterEach(async () => {
  vi.useRealTimers();
  sockets.splice(0).forEach((socket) => socket.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

describe('session expiry on the wire', () => {
  it('at expiresAt the server sends TOKEN_EXPIRED, then disconnects the socket', async () => {
    server = await startServer({ authenticate: (_socket, token) => (token ? { user: { id: token }, expiresAt: Date.now() + 250 } : null) });
    const socket = await rawSocket(server.url, { token: 'alice' });
    sockets.push(socket);
    expect((await request(socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos'] })).ok).toBe(true);
    const expired = nextServerError(socket);
    const disconnected = new Promise<string>((resolve) => socket.once('disconnect', resolve));
    expect(await expired).toMatchObject({ code: 'TOKEN_EXPIRED', details: { expiresAt: expect.any(Number) } });
    expect(await disconnected).toBe('io server disconnect');
    await waitFor(() => server!.server.getClientsCount() === 0, 'the expired socket to be gone');
  });

  it('a token that has already expired is refused with TOKEN_EXPIRED', async () => {
    server = await startServer({ authenticate: () => ({ user: { id: 'alice' }, expiresAt: Date.now() - 1 }) });
    const error = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'c', token: 't' });
    expect(error.data).toMatchObject({ code: 'TOKEN_EXPIRED' });
  });

  it('a session shape is recognised only with exactly the keys user and expiresAt', async () => {
    const users: unknown[] = [];
    server = await startServer({
      authenticate: (_socket, token) =>
        token === 'wrapped'
          ? { user: { id: 'w' }, expiresAt: Date.now() + 60_000 }
          : { user: 'a field of the user', expiresAt: Date.now() - 1000, role: 'admin' },
      authorize: (user) => {
        users.push(user);
        return true;
      },
    });
    // Three keys: the whole object is the user, and its own "expiresAt" in the past does not end the session.
    const plain = await rawSocket(server.url, { token: 'plain' });
    const wrapped = await rawSocket(server.url, { token: 'wrapped' });
    sockets.push(plain, wrapped);
    await sleep(100);
    expect(plain.connected).toBe(true);
    const clients = server.server.getClients();
    expect(clients.find((c) => c.user && (c.user as { role?: string }).role === 'admin')?.expiresAt).toBeUndefined();
    expect(clients.find((c) => (c.user as { id?: string }).id === 'w')?.expiresAt).toEqual(expect.any(Number));

    expect(
      sessionOf({ user: { id: 'x' }, expiresAt: 5 }),
    ).toEqual({ user: { id: 'x' }, expiresAt: 5 });
    expect(sessionOf({ id: 'x', expiresAt: 5 })).toEqual({ user: { id: 'x', expiresAt: 5 } });
    class Account {
      user = 'me';
      expiresAt = 5;
    }
    expect(sessionOf(new Account()).user).toBeInstanceOf(Account);
    expect(sessionOf('alice')).toEqual({ user: 'alice' });
  });

  it('a session whose expiresAt is not a time is refused loudly, not taken as a user that never expires', async () => {
    server = await startServer({ authenticate: () => ({ user: { id: 'a' }, expiresAt: new Date(Date.now() + 60_000) }) as never });
    const error = await connectError(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'c', token: 't' });
    expect(error.data?.code).toBe('INTERNAL');
    expect(error.data?.message).toContain('expiresAt');
  });

  it('an expiry further away than setTimeout can wait is still honoured', () => {
    vi.useFakeTimers();
    const fired = vi.fn();
    runAt(Date.now() + 2 ** 31 + 60_000, fired);
    vi.advanceTimersByTime(2 ** 31 - 1);
    expect(fired).not.toHaveBeenCalled();
    vi.advanceTimersByTime(61_000);
    expect(fired).toHaveBeenCalledOnce();
  });
});

describe('the real client and an expiring token', () => {
  it('renews the session over the open connection before it expires: no disconnect, across several expiries', async () => {
    const renewals: string[] = [];
    server = await startServer({
      authenticate: (_socket, token) => (token ? { user: { id: 'alice' }, expiresAt: Date.now() + 1500 } : null),
    });
    server.server.events.on('client-disconnect', () => renewals.push('disconnect'));
    let calls = 0;
    const alice = await startClient(server.url, { authToken: async () => `token-${++calls}` });
    clients.push(alice);
    await waitFor(() => alice.sync.getStatus().connected, 'alice connected');
    // Each session lives 1.5 s (renewals are at least 1 s apart); four tokens are three expiries.
    await waitFor(() => calls >= 4, 'the client to renew several times', 15_000);
    expect(renewals).toEqual([]);
    expect(alice.sync.getStatus()).toMatchObject({ connected: true, error: null });
    await alice.todos.insert({ id: 'renewed', title: 'written on a renewed session', done: false });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the write to arrive');
  });

  it('a renewal with a token of another user is refused, and the session ends at its time (TOKEN_EXPIRED)', async () => {
    server = await startServer({
      authenticate: (_socket, token) => (token ? { user: { id: token.split('-')[0] }, expiresAt: Date.now() + 500 } : null),
    });
    let calls = 0;
    const client = await startClient(server.url, { authToken: async () => (++calls === 1 ? 'alice-1' : 'mallory-1') });
    clients.push(client);
    const errors: string[] = [];
    client.sync.status$.subscribe((status) => status.error && errors.push(status.error.code));
    const refusals: unknown[] = [];
    server.server.events.on('login-failed', (failure) => refusals.push(failure));
    await waitFor(() => errors.includes('TOKEN_EXPIRED'), 'the session to end');
    // The renewal was asked for and refused as a failed login, not ignored.
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(refusals).toEqual([expect.objectContaining({ limited: false })]);
  });

  it('fetches a fresh token, reconnects, and pushes the writes made while it was out', async () => {
    const accepted: string[] = [];
    server = await startServer({
      authenticate: (_socket, token) => {
        if (!token) return null;
        accepted.push(token);
        // The first token lives a moment; later ones for a minute.
        return { user: { id: 'alice' }, expiresAt: Date.now() + (token === 'token-1' ? 300 : 60_000) };
      },
    });
    let calls = 0;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const authToken = vi.fn(async () => {
      calls++;
      // Holds back the renewal (so the session expires) and the reconnection, until the test has written offline.
      if (calls >= 2) await gate;
      return `token-${calls}`;
    });
    const alice = await startClient(server.url, { authToken });
    const other = await startClient(server.url, { authToken: async () => 'reader' });
    clients.push(alice, other);
    const errors: string[] = [];
    alice.sync.status$.subscribe((status) => status.error && errors.push(status.error.code));

    await waitFor(() => alice.sync.getStatus().connected && other.sync.getStatus().connected, 'both connected');
    await alice.todos.insert({ id: 'before', title: 'written with token 1', done: false });
    await waitFor(() => alice.sync.getStatus().connected === false, 'the session to expire');
    expect(errors).toContain('TOKEN_EXPIRED');

    await waitFor(() => authToken.mock.calls.length === 3, 'the client to ask for a fresh token to reconnect');
    await alice.todos.insert({ id: 'while-out-1', title: 'written while expired', done: false });
    await alice.todos.insert({ id: 'while-out-2', title: 'also written while expired', done: false });
    await waitFor(() => alice.sync.getStatus().pendingEvents === 2, 'both offline writes in the pending log');
    expect(alice.sync.getStatus().connected).toBe(false);
    release();

    await waitFor(() => alice.sync.getStatus().connected, 'the client to reconnect');
    await waitFor(async () => (await other.todos.count().exec()) === 3, 'the other client to get all three writes');
    expect(accepted).toContain('token-3');
    expect(alice.sync.getStatus()).toMatchObject({ pendingEvents: 0, error: null });
    expect(await server.server.getStorage().countEvents()).toBe(3);
    expect((await contents(other.todos)).map((t) => t.id)).toEqual(['before', 'while-out-1', 'while-out-2']);
  });
});
