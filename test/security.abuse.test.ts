/**
 * One connection cannot stall the others: a flood of requests, a socket that
 * never reads its replies, a flood of invalid messages, guessed tokens and a
 * second connection with someone's client id each cost the offender its
 * connection (counted in metrics), while a well-behaved client on the same
 * server keeps its round trips. And the real client never sends what the
 * server would drop, nor reconnects without a pause.
 */
import { Manager, io, type Socket } from 'socket.io-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseHlc } from '../src/shared/hlc.js';
import { createSyncMetrics } from '../src/server/index.js';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type WelcomeMessage } from '../src/shared/protocol/index.js';
import { rawEvent, request, sleep, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const sockets: Socket[] = [];
const managers: Manager[] = [];
const clients: TestClient[] = [];

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  managers.splice(0).forEach((manager) => manager.engine?.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

/** A connection in this release's protocol, as a hand-written client opens it; resolves once welcomed. */
async function connect(auth: Record<string, unknown> = {}): Promise<{ socket: Socket; welcome: WelcomeMessage }> {
  const socket = io(server!.url, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    autoConnect: false,
    auth: { protocolVersion: PROTOCOL_VERSION, clientId: `raw-${uniqueName()}`, ...auth },
  });
  sockets.push(socket);
  const welcome = new Promise<WelcomeMessage>((resolve, reject) => {
    socket.once(MESSAGE.welcome, resolve);
    socket.once('connect_error', reject);
  });
  socket.connect();
  return { socket, welcome: await welcome };
}

const pull = (socket: Socket) => request(socket, MESSAGE.pull, { checkpoint: 0, collections: ['todos'] });

/** Resolves with the reason the server gave when it dropped `socket`, once it is disconnected. */
function dropped(socket: Socket): Promise<{ code: string; message: string }> {
  return new Promise((resolve, reject) => {
    let reason: { code: string; message: string } | undefined;
    // The last error before the end: a flood of invalid messages is answered many times first.
    socket.on(MESSAGE.error, (error: { code: string; message: string }) => (reason = error));
    socket.once('disconnect', () => (reason ? resolve(reason) : reject(new Error('disconnected without a reason'))));
  });
}

function droppedOnServer(): { clientId: string; reason: string }[] {
  const drops: { clientId: string; reason: string }[] = [];
  server!.server.events.on('client-dropped', (drop) => drops.push(drop));
  return drops;
}

async function metric(name: string): Promise<string[]> {
  return (await metrics!.render()).split('\n').filter((line) => line.startsWith(`rxdb_offline_sync_${name}`));
}
let metrics: ReturnType<typeof createSyncMetrics> | undefined;
afterEach(() => {
  metrics?.close();
  metrics = undefined;
});

describe('the handshake', () => {
  it('welcomes every connection with the server time and the limits it holds messages to', async () => {
    server = await startServer({ maxPayloadBytes: 123_456, maxEventsPerPush: 77, maxPullLimit: 88, maxClockDrift: 60_000 });
    const before = Date.now();
    const { welcome } = await connect();
    expect(welcome.limits).toEqual({ maxPayloadBytes: 123_456, maxEventsPerPush: 77, maxPullLimit: 88, maxClockDrift: 60_000, maxAttachmentBytes: 100 * 1024 * 1024 });
    expect(welcome.serverTime).toBeGreaterThanOrEqual(before);
    expect(welcome.serverTime).toBeLessThanOrEqual(Date.now());
  });
});

describe('floods from one socket', () => {
  it('pulls sent without waiting for answers: the flooder is dropped (TOO_MANY_REQUESTS), the good client is served', async () => {
    server = await startServer();
    metrics = createSyncMetrics(server.server, { defaultMetrics: false });
    const drops = droppedOnServer();
    const { socket: good } = await connect();
    const { socket: flooder } = await connect();
    const reason = dropped(flooder);
    for (let i = 0; i < 200; i++) flooder.emit(MESSAGE.pull, { checkpoint: 0, collections: ['todos'] }, () => undefined);
    expect(await reason).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
    expect((await pull(good)).ok).toBe(true);
    expect(drops).toEqual([expect.objectContaining({ reason: 'TOO_MANY_REQUESTS' })]);
    expect(await metric('dropped_connections_total{reason="TOO_MANY_REQUESTS"}')).toEqual([expect.stringMatching(/ 1$/)]);
  });

  it('pushes sent back to back: one is served per turn, the rest queue, and the flooder is dropped (TOO_MANY_REQUESTS)', async () => {
    server = await startServer();
    const { socket: good } = await connect();
    const { socket: flooder } = await connect();
    const reason = dropped(flooder);
    const pushes = Array.from({ length: 60 }, (_, batch) =>
      toPushRows(Array.from({ length: 200 }, (_, i) => rawEvent({ documentId: `flood-${batch}-${i}` })), 'flooder'),
    );
    for (const push of pushes) flooder.emit(MESSAGE.push, push, () => undefined);
    expect(await reason).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
    expect((await pull(good)).ok).toBe(true);
    expect(await server.server.getStorage().countEvents()).toBeLessThan(60 * 200);
  });

  it('a connection that goes on sending while rate limited is dropped, after maxRefused answers of RATE_LIMITED', async () => {
    server = await startServer({ rateLimit: { windowMs: 60_000, max: 5, maxRefused: 3 } });
    const { socket } = await connect();
    const reason = dropped(socket);
    for (let i = 0; i < 5; i++) expect((await pull(socket)).ok).toBe(true);
    for (let i = 0; i < 3; i++) expect((await pull(socket)).error).toMatchObject({ code: 'RATE_LIMITED' });
    socket.emit(MESSAGE.pull, { checkpoint: 0, collections: ['todos'] }, () => undefined);
    expect(await reason).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
  });

  it('invalid messages: rate limits are on by default and a flood of them is dropped; the good client is served', async () => {
    server = await startServer();
    const { socket: good } = await connect();
    const { socket: flooder } = await connect();
    const reason = dropped(flooder);
    for (let i = 0; i < 2000 && flooder.connected; i++) {
      flooder.emit('sync:nonsense', { junk: i });
      if (i % 100 === 99) await sleep(0);
    }
    expect(await reason).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
    expect((await pull(good)).ok).toBe(true);
  });

  it('messages over maxPayloadBytes: each is answered PAYLOAD_TOO_LARGE, and a stream of them drops the connection', async () => {
    server = await startServer({ maxPayloadBytes: 16 * 1024 });
    const { socket } = await connect();
    const reason = dropped(socket);
    const oversized = { checkpoint: 0, collections: ['todos'], padding: 'x'.repeat(20 * 1024) };
    for (let i = 0; i < 3; i++) expect((await request(socket, MESSAGE.pull, oversized)).error).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    socket.emit(MESSAGE.pull, oversized, () => undefined);
    expect(await reason).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
  });

  it('defaults never limit a real client: an offline backlog of 5,000 writes and 50 pulls a second pass', async () => {
    server = await startServer();
    const { socket } = await connect();
    for (let i = 0; i < 60; i++) {
      expect((await pull(socket)).ok).toBe(true);
      await sleep(20);
    }
    const client = await startClient(server.url, { autoSync: false });
    clients.push(client);
    await client.todos.bulkInsert(Array.from({ length: 5000 }, (_, i) => ({ id: `b${i}`, title: `backlog ${i}`, done: false })));
    const errors = new Set<string>();
    client.sync.status$.subscribe((status) => status.error && errors.add(status.error.code));
    expect(await client.sync.syncNow()).toMatchObject({ success: true });
    expect(await server.server.getStorage().countEvents()).toBe(5000);
    expect(errors.size).toBe(0);
  });

  it('a socket that never reads its replies is dropped (SLOW_CONSUMER) once they pass maxUnsentBytes', async () => {
    server = await startServer({ maxUnsentBytes: 256 * 1024 });
    metrics = createSyncMetrics(server.server, { defaultMetrics: false });
    const drops = droppedOnServer();
    const { socket: writer } = await connect();
    const big = 'x'.repeat(20_000);
    for (let batch = 0; batch < 4; batch++) {
      const events = Array.from({ length: 25 }, (_, i) => rawEvent({ documentId: `big-${batch}-${i}`, data: { id: `big-${batch}-${i}`, title: big, done: false } }));
      expect((await request(writer, MESSAGE.push, toPushRows(events, 'writer'))).ok).toBe(true);
    }
    const { socket: good } = await connect();
    const { socket: stalled } = await connect();
    // The peer stops reading: its kernel buffers fill, then the server's.
    (stalled.io.engine.transport as unknown as { ws: { _socket: { pause(): void } } }).ws._socket.pause();
    for (let i = 0; i < 12; i++) stalled.emit(MESSAGE.pull, { checkpoint: 0, collections: ['todos'] }, () => undefined);
    await waitFor(() => drops.some((drop) => drop.reason === 'SLOW_CONSUMER'), 'the stalled socket to be dropped', 20_000);
    expect((await pull(good)).ok).toBe(true);
    await waitFor(() => server!.server.getClientsCount() === 2, 'the stalled connection to be closed', 20_000);
    expect(await metric('dropped_connections_total{reason="SLOW_CONSUMER"}')).toEqual([expect.stringMatching(/ 1$/)]);
  });
});

describe('admission', () => {
  const refusal = (auth: Record<string, unknown> = {}) => connect(auth).then(() => undefined, (error: Error & { data?: unknown }) => error.data);

  it('maxConnections: past it a handshake is refused SERVER_BUSY with a time to come back; a freed slot admits again', async () => {
    server = await startServer({ maxConnections: 2 });
    const { socket: first } = await connect();
    await connect();
    expect(await refusal()).toMatchObject({ code: 'SERVER_BUSY', details: { reason: 'connections', retryAfterMs: expect.any(Number) } });
    first.close();
    await waitFor(() => server!.server.getClientsCount() === 1, 'the closed connection to be gone');
    const client = await startClient(server.url);
    clients.push(client);
    await waitFor(() => client.sync.getStatus().connected, 'the real client to be admitted');
  });

  it('maxHandshakesPerSecond: the excess of a storm is refused SERVER_BUSY, told to come back spread over the backlog', async () => {
    server = await startServer({ maxHandshakesPerSecond: 3 });
    const results = await Promise.all(Array.from({ length: 9 }, () => refusal()));
    const refused = results.filter((result): result is { code: string; details: { retryAfterMs: number } } => result !== undefined);
    // Three admitted in this second (or a few more, if the storm straddled two seconds).
    expect(refused.length).toBeGreaterThanOrEqual(3);
    expect(refused.every((result) => result.code === 'SERVER_BUSY' && result.details.retryAfterMs > 0)).toBe(true);
  });
});

describe('failed logins', () => {
  const authenticate = (_socket: unknown, token: string | undefined) => (token === 'right' ? { id: 'alice' } : null);

  /** One engine.io connection on which handshakes are tried one after another, as a guesser would. */
  function oneConnection() {
    const manager = new Manager(server!.url, { transports: ['websocket'], reconnection: false, autoConnect: false });
    managers.push(manager);
    const socket = manager.socket('/');
    const tryToken = (token: string) =>
      new Promise<{ ok: true } | { ok: false; code: string | undefined }>((resolve) => {
        socket.auth = { protocolVersion: PROTOCOL_VERSION, clientId: `guess-${uniqueName()}`, token };
        socket.once('connect', () => resolve({ ok: true }));
        socket.once('connect_error', (error: Error & { data?: { code?: string } }) => resolve({ ok: false, code: error.data?.code }));
        socket.connect();
      });
    return { manager, tryToken };
  }

  it('per connection: after perConnection wrong tokens the server closes the connection; a new one is heard', async () => {
    server = await startServer({ authenticate, loginLimit: { windowMs: 60_000, perConnection: 3, perAddress: 100 } });
    metrics = createSyncMetrics(server.server, { defaultMetrics: false });
    const { manager, tryToken } = oneConnection();
    const engine = await new Promise<{ id: string; once(event: 'close', listener: () => void): void }>((resolve) => manager.once('open', () => resolve(manager.engine)).open());
    const closed = new Promise<void>((resolve) => engine.once('close', resolve));
    for (let i = 0; i < 3; i++) expect(await tryToken(`wrong-${i}`)).toEqual({ ok: false, code: 'UNAUTHENTICATED' });
    await closed;
    await connect({ token: 'right' });
    expect(await metric('failed_logins_total{limited="false"}')).toEqual([expect.stringMatching(/ 3$/)]);
  });

  it('per address: past perAddress failures in the window, logins from it are refused unheard (RATE_LIMITED)', async () => {
    server = await startServer({ authenticate, loginLimit: { windowMs: 60_000, perConnection: 2, perAddress: 4 } });
    for (let connection = 0; connection < 2; connection++) {
      const { tryToken } = oneConnection();
      for (let i = 0; i < 2; i++) expect(await tryToken('wrong')).toEqual({ ok: false, code: 'UNAUTHENTICATED' });
    }
    const refused = await connect({ token: 'right' }).catch((error: Error & { data?: { code: string; details?: unknown } }) => error.data);
    expect(refused).toMatchObject({ code: 'RATE_LIMITED', details: { scope: 'login' } });
  });
});

describe('client ids', () => {
  it('a second live connection with the same client id replaces the first, which is told REPLACED', async () => {
    server = await startServer();
    const drops = droppedOnServer();
    const { socket: first } = await connect({ clientId: 'device-1' });
    const reason = dropped(first);
    const { socket: second } = await connect({ clientId: 'device-1' });
    expect(await reason).toMatchObject({ code: 'REPLACED' });
    expect((await pull(second)).ok).toBe(true);
    expect(server.server.getClientsCount()).toBe(1);
    expect(drops).toEqual([{ clientId: 'device-1', reason: 'REPLACED' }]);
  });

  it('a client id belongs to the user who first used it: another user is refused (CLIENT_ID_TAKEN), the owner is not', async () => {
    server = await startServer({ authenticate: (_socket: unknown, token: string | undefined) => (token ? { id: token } : null) });
    const { socket: alice } = await connect({ clientId: 'tablet-7', token: 'alice' });
    const refused = await connect({ clientId: 'tablet-7', token: 'mallory' }).catch((error: Error & { data?: unknown }) => error.data);
    expect(refused).toMatchObject({ code: 'CLIENT_ID_TAKEN' });
    // Alice's connection was not replaced by the refused one.
    expect((await pull(alice)).ok).toBe(true);
    alice.close();
    // Claimed in storage, not in the connection: it holds after alice is gone, and alice gets it back.
    expect(await connect({ clientId: 'tablet-7', token: 'mallory' }).catch((error: Error & { data?: unknown }) => error.data)).toMatchObject({ code: 'CLIENT_ID_TAKEN' });
    expect((await pull((await connect({ clientId: 'tablet-7', token: 'alice' })).socket)).ok).toBe(true);
    expect(await server.server.getStorage().claimClient('tablet-7', 'someone')).toBe('alice');
  });

  it('maxConnectionsPerUser does not keep out a device whose earlier connection it is about to replace', async () => {
    server = await startServer({ authenticate: (_socket: unknown, token: string | undefined) => (token ? { id: token } : null), maxConnectionsPerUser: 1 });
    // The earlier connection of the device, as the server still holds it after the link died.
    const { socket: stale } = await connect({ clientId: 'phone-1', token: 'alice' });
    const replaced = dropped(stale);
    const { socket: again } = await connect({ clientId: 'phone-1', token: 'alice' });
    expect(await replaced).toMatchObject({ code: 'REPLACED' });
    expect((await pull(again)).ok).toBe(true);
    // Another device of the same user is still held to the limit.
    expect(await connect({ clientId: 'tablet-2', token: 'alice' }).catch((error: Error & { data?: unknown }) => error.data)).toMatchObject({ code: 'TOO_MANY_CONNECTIONS' });
  });

  it('the real client, replaced, says so and does not come straight back to take the id', async () => {
    server = await startServer();
    const client = await startClient(server.url, { retry: { maxRetries: 5, retryDelay: 20, maxDelay: 50, useExponentialBackoff: true } });
    clients.push(client);
    await waitFor(() => client.sync.getStatus().connected, 'the client to connect');
    let connections = 0;
    server.server.events.on('client-connect', () => connections++);
    const clientId = clientIdOf(server);
    await connect({ clientId });
    await waitFor(() => client.sync.getStatus().error?.code === 'REPLACED', 'the client to report REPLACED');
    expect(client.sync.getStatus().connected).toBe(false);
    // Ten times its longest backoff: a client that fought for the id would have come back by now (it waits 15 s).
    await sleep(500);
    expect(connections).toBe(1);
    // The app asks: it connects again.
    expect(await client.sync.syncNow()).toMatchObject({ success: true });
  });
});

/** The client id of the one connection on `server`. */
function clientIdOf(testServer: TestServer): string {
  const [client] = testServer.server.getClients();
  return client!.clientId;
}

describe('the client never sends what the server would drop', () => {
  it('a document larger than the server takes is set aside as rejected without being sent; the rest syncs, no reconnect', async () => {
    server = await startServer({ maxPayloadBytes: 64 * 1024 });
    let connections = 0;
    server.server.events.on('client-connect', () => connections++);
    const client = await startClient(server.url, { autoSync: false });
    clients.push(client);
    // Multi-byte text: 100,000 characters, 300,000 bytes of UTF-8, over twice the limit.
    await client.todos.insert({ id: 'huge', title: '界'.repeat(100_000), done: false });
    await client.todos.bulkInsert(Array.from({ length: 3 }, (_, i) => ({ id: `small-${i}`, title: 'small', done: false })));
    expect(await client.sync.syncNow()).toMatchObject({ success: true });
    expect(client.sync.getRejectedEvents()).toEqual([expect.objectContaining({ event: expect.objectContaining({ documentId: 'huge' }), error: expect.objectContaining({ code: 'PAYLOAD_TOO_LARGE' }) })]);
    expect(await server.server.getStorage().countEvents()).toBe(3);
    expect(connections).toBe(1);
  });

  it('every reconnect waits its backoff: a server that drops the client at once sees attempts spaced, not a storm', async () => {
    server = await startServer();
    const at: number[] = [];
    server.server.getIo().on('connection', (socket) => {
      at.push(performance.now());
      socket.disconnect(true);
    });
    const client = await startClient(server.url, { retry: { maxRetries: 5, retryDelay: 100, maxDelay: 400, useExponentialBackoff: true } });
    clients.push(client);
    await waitFor(() => at.length >= 5, 'five connections', 20_000);
    const gaps = at.slice(1).map((time, i) => time - at[i]!);
    // Each wait is at least half its step (jitter takes up to half off): 50, 100, 200, 200 ms.
    expect(gaps[0]).toBeGreaterThanOrEqual(50);
    expect(gaps.slice(2).every((gap) => gap >= 200 - 5)).toBe(true);
  });

  it("changes made offline under a clock years ahead are stamped again by the server's time, not refused", async () => {
    server = await startServer({ maxClockDrift: 60 * 60 * 1000 });
    const client = await startClient(server.url, { autoSync: false });
    clients.push(client);
    const realNow = Date.now.bind(Date);
    const tenYears = 10 * 365 * 24 * 60 * 60 * 1000;
    // The device's clock is wrong while it edits offline (nothing else runs meanwhile: the server is idle).
    const wrongClock = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + tenYears);
    try {
      await client.todos.bulkInsert(Array.from({ length: 5 }, (_, i) => ({ id: `future-${i}`, title: `edited offline ${i}`, done: false })));
    } finally {
      wrongClock.mockRestore();
    }
    expect(await client.sync.syncNow()).toMatchObject({ success: true });
    expect(client.sync.getRejectedEvents()).toEqual([]);
    const stored = await server.server.getStorage().getEventsAfter(0);
    expect(stored.map((event) => event.documentId).sort()).toEqual([0, 1, 2, 3, 4].map((i) => `future-${i}`));
    for (const event of stored) expect(parseHlc(event.hlc).millis).toBeLessThanOrEqual(Date.now());
  });
});

describe('the live fan-out', () => {
  it('never holds the ack: a push is acknowledged while read checks for the others still wait, and they get it after', async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    server = await startServer({
      authorize: async (_user: unknown, _collection: string, operation: string) => {
        if (operation === 'read') await gate;
        return true;
      },
    });
    const { socket: reader } = await connect();
    expect((await request(reader, MESSAGE.subscribe, { collections: ['todos'] })).ok).toBe(true);
    const live = new Promise<unknown>((resolve) => reader.once(MESSAGE.live, resolve));
    const { socket: writer } = await connect();
    try {
      // Accepted, under its sequence number.
      expect(await request(writer, MESSAGE.push, toPushRows([rawEvent({ documentId: 'gated' })], 'writer'))).toEqual({ ok: true, results: [1] });
    } finally {
      open();
    }
    expect(await live).toMatchObject({ events: [expect.objectContaining({ documentId: 'gated' })] });
  });

  it('pushes that come together go out together: one message per reader, each writer gets the others\' events only', async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let held = true;
    server = await startServer({
      // The first fan-out waits on the gate; the pushes that come meanwhile gather behind it.
      authorize: async (_user: unknown, _collection: string, operation: string) => {
        if (operation === 'read' && held) await gate;
        return true;
      },
    });
    const subscribed = async () => {
      const { socket } = await connect();
      expect((await request(socket, MESSAGE.subscribe, { collections: ['todos'] })).ok).toBe(true);
      const messages: { documentId: string }[][] = [];
      socket.on(MESSAGE.live, (message: { events: { documentId: string }[] }) => messages.push(message.events));
      return { socket, messages };
    };
    const reader = await subscribed();
    const a = await subscribed();
    const b = await subscribed();
    const push = (socket: Socket, id: string) => request(socket, MESSAGE.push, toPushRows([rawEvent({ documentId: id })], 'w'));
    await push(a.socket, 'first');
    // While the first fan-out is held: two writers, three pushes.
    await Promise.all([push(a.socket, 'a-1'), push(b.socket, 'b-1'), push(a.socket, 'a-2')]);
    held = false;
    open();
    const ids = (messages: { documentId: string }[][]) => messages.map((events) => events.map((event) => event.documentId).sort());
    await waitFor(() => reader.messages.length === 2, 'the reader to get two messages');
    expect(ids(reader.messages)).toEqual([['first'], ['a-1', 'a-2', 'b-1']]);
    await waitFor(() => a.messages.length === 1 && b.messages.length === 2, 'the writers to get the others\' events');
    expect(ids(a.messages)).toEqual([['b-1']]);
    expect(ids(b.messages)).toEqual([['first'], ['a-1', 'a-2']]);
  });
});
