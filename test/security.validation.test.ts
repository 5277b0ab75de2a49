/**
 * One device never stalls the others (issue 20): what it pushes must be a
 * document every client can apply and carry a clock that is not from the
 * future, and its pushes cost the server per user, not per socket.
 */
import { createServer } from 'node:http';
import type { RxJsonSchema } from 'rxdb';
import { wrappedValidateAjvStorage } from 'rxdb/plugins/validate-ajv';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { SyncError } from '../src/shared/errors.js';
import { formatHlc } from '../src/shared/hlc.js';
import { MESSAGE } from '../src/shared/protocol/index.js';
import { createSyncServer, type Authorize, type SyncServerOptions } from '../src/server/index.js';
import type { AuthorizeRead } from '../src/server/options.js';
import {
  collectLive,
  contents,
  pull,
  push,
  rawEvent,
  rawSocket,
  request,
  startClient,
  startServer,
  statuses,
  todoSchema,
  waitFor,
  type TestClient,
  type TestServer,
} from './helpers.js';

let server: TestServer | undefined;
const sockets: Socket[] = [];
const clients: TestClient[] = [];

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

async function connect(auth: Record<string, unknown> = {}) {
  const socket = await rawSocket(server!.url, auth);
  sockets.push(socket);
  return socket;
}

const stored = async () => (await server!.server.getStorage().getEventsAfter(0)).map((event) => event.documentId);

/** A plugin client whose RxDB storage validates every write against the collection's schema, as an app in dev mode does. */
async function validatingClient(url: string) {
  const client = await startClient(url, { storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }) });
  clients.push(client);
  return client;
}

describe('document validation (schemas)', () => {
  it('schema-breaking documents are refused with SCHEMA_VIOLATION before they are stored; the rest of the batch is stored', async () => {
    server = await startServer({ schemas: { todos: todoSchema } });
    const socket = await connect();
    const wrongType = rawEvent({ documentId: 'bad-type', data: { id: 'bad-type', title: 12345, done: false } });
    const missing = rawEvent({ documentId: 'bad-missing', data: { id: 'bad-missing', title: 'no done' } });
    const extra = rawEvent({ documentId: 'bad-extra', data: { id: 'bad-extra', title: 'x', done: false, colour: 'red' } });
    const good = rawEvent({ documentId: 'good' });
    const reply = await push(socket, [wrongType, missing, good, extra]);

    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'SCHEMA_VIOLATION', details: { documentId: 'bad-type', path: '/title' } } });
    expect(reply.results[0].error.message).toContain('/title must be string');
    expect(reply.results[1]).toMatchObject({ status: 'rejected', error: { code: 'SCHEMA_VIOLATION' } });
    expect(reply.results[1].error.message).toContain("must have required property 'done'");
    expect(reply.results[2]).toBeTypeOf('number');
    expect(reply.results[3]).toMatchObject({ status: 'rejected', error: { code: 'SCHEMA_VIOLATION' } });
    expect(reply.results[3].error.message).toContain('colour');
    expect(await stored()).toEqual(['good']);
    expect(server.server.getStats()).toMatchObject({ accepted: 1, rejected: 3 });
  });

  it('an update is checked as the whole document it leaves; a delete is not checked; RxDB bookkeeping fields pass', async () => {
    server = await startServer({ schemas: { todos: todoSchema } });
    const socket = await connect();
    const insert = rawEvent({ documentId: 'd1' });
    await push(socket, [insert]);

    const broken = rawEvent({
      documentId: 'd1',
      op: 'update',
      baseEventId: insert.id,
      data: { id: 'd1', title: 'doc d1', done: 'yes' },
      patch: [{ op: 'replace', path: '/done', value: 'yes' }],
    });
    const brokenReply = await push(socket, [broken]);
    expect(brokenReply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'SCHEMA_VIOLATION', details: { path: '/done' } } });

    const bookkeeping = { _deleted: false, _rev: '2-abc', _meta: { lwt: 1 }, _attachments: {} };
    const update = rawEvent({ documentId: 'd1', op: 'update', baseEventId: insert.id, data: { id: 'd1', title: 'renamed', done: true, ...bookkeeping } });
    expect((await push(socket, [update])).results[0]).toBeTypeOf('number');

    // A delete carries the last state, whatever it was: it is not a document anyone applies.
    const remove = rawEvent({ documentId: 'd1', op: 'delete', baseEventId: update.id, data: { id: 'd1', title: 42 } });
    expect((await push(socket, [remove])).results[0]).toBeTypeOf('number');
    expect(await stored()).toEqual(['d1', 'd1', 'd1']);
  });

  it('a collection without a schema is not checked', async () => {
    server = await startServer({ schemas: { todos: todoSchema } });
    const socket = await connect();
    const note = rawEvent({ documentId: 'n1', collection: 'notes', data: { anything: 12345 } });
    expect((await push(socket, [note])).results[0]).toBeTypeOf('number');
  });

  it('a client whose RxDB storage validates keeps syncing while another device pushes schema-breaking documents', async () => {
    server = await startServer({ schemas: { todos: todoSchema } });
    const reader = await validatingClient(server.url);
    const writer = await validatingClient(server.url);
    const hostile = await connect();
    await push(hostile, [rawEvent({ documentId: 'h1', data: { id: 'h1', title: 12345, done: false } }), rawEvent({ documentId: 'h2', data: { id: 'h2', title: 'fine', done: false } })]);
    await writer.todos.insert({ id: 'w1', title: 'from the writer', done: false });
    expect((await writer.sync.syncNow()).success).toBe(true);

    for (let round = 0; round < 2; round++) {
      const result = await reader.sync.syncNow();
      expect(result.error).toBeNull();
      expect(result.success).toBe(true);
    }
    expect((await contents(reader.todos)).map((todo) => todo.id)).toEqual(['h2', 'w1']);
    await reader.todos.insert({ id: 'r1', title: 'from the reader', done: true });
    expect((await reader.sync.syncNow()).success).toBe(true);
    await waitFor(async () => (await contents(writer.todos)).some((todo) => todo.id === 'r1'), 'the writer to get the reader’s todo');
    expect(reader.sync.getStatus().error).toBeNull();
  });
});

describe('the schemas option', () => {
  const httpServer = createServer();

  function refusal(schemas: Record<string, unknown>): SyncError {
    try {
      createSyncServer({ httpServer, logging: { enabled: false }, schemas } as SyncServerOptions);
    } catch (error) {
      expect(error).toBeInstanceOf(SyncError);
      return error as SyncError;
    }
    throw new Error('the schemas were accepted');
  }

  it.each([
    ['a wrong type name', { type: 'object', properties: { title: { type: 'strin' } } }],
    ['a misspelt keyword', { type: 'object', properties: { title: { type: 'string' } }, requried: ['title'] }],
    ['not an object', 'todos'],
  ])('%s is refused with INVALID_OPTION naming the collection', (_name, schema) => {
    const error = refusal({ todos: todoSchema, projects: schema });
    expect(error.code).toBe('INVALID_OPTION');
    expect(error.message).toContain('schemas.projects');
    expect(error.details).toMatchObject({ option: 'schemas.projects' });
  });

  it("takes RxDB's own keywords and formats, as an app's schema has them", async () => {
    const schema: RxJsonSchema<{ id: string; tenant: string; email: string; at: string; parent?: string; secret?: string }> = {
      title: 'projects',
      version: 3,
      primaryKey: { key: 'id', fields: ['tenant', 'email'], separator: '|' },
      type: 'object',
      keyCompression: false,
      properties: {
        id: { type: 'string', maxLength: 200 },
        tenant: { type: 'string', maxLength: 50, final: true },
        email: { type: 'string', format: 'email', maxLength: 100 },
        at: { type: 'string', format: 'date-time' },
        parent: { type: 'string', ref: 'projects' },
        secret: { type: 'string' },
      },
      required: ['tenant', 'email', 'at'],
      indexes: ['at', ['tenant', 'at']],
      encrypted: ['secret'],
      attachments: { encrypted: false },
    };
    server = await startServer({ schemas: { projects: schema } });
    const socket = await connect();
    const ok = rawEvent({ documentId: 'acme|a@example.com', collection: 'projects', data: { id: 'acme|a@example.com', tenant: 'acme', email: 'a@example.com', at: '2024-05-01T10:00:00Z' } });
    const badEmail = rawEvent({ documentId: 'acme|nope', collection: 'projects', data: { id: 'acme|nope', tenant: 'acme', email: 'nope', at: '2024-05-01T10:00:00Z' } });
    const noKey = rawEvent({ documentId: 'k', collection: 'projects', data: { tenant: 'acme', email: 'b@example.com', at: '2024-05-01T10:00:00Z' } });
    const reply = await push(socket, [ok, badEmail, noKey]);
    expect(reply.results[0]).toBeTypeOf('number');
    expect(reply.results[1]).toMatchObject({ status: 'rejected', error: { code: 'SCHEMA_VIOLATION', details: { path: '/email', keyword: 'format' } } });
    // The primary key is required, as RxDB makes it.
    expect(reply.results[2].error.message).toContain("must have required property 'id'");
  });
});

describe('clock drift (maxClockDrift)', () => {
  const at = (millis: number, counter = 0) => formatHlc({ millis, counter, node: 'raw' });

  it('an event dated far in the future is refused with CLOCK_DRIFT giving both times; a normal client is unaffected', async () => {
    server = await startServer();
    const first = await startClient(server.url);
    const second = await startClient(server.url);
    clients.push(first, second);
    const device = await connect();
    const future = rawEvent({ documentId: 'f1', hlc: at(999_999_999_999_999) });
    const fine = rawEvent({ documentId: 'f2' });
    const reply = await push(device, [future, fine]);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'CLOCK_DRIFT', details: { eventTime: 999_999_999_999_999 } } });
    expect(reply.results[0].error.message).toContain('+033658-');
    expect(reply.results[0].error.message).toContain(`server's time ${new Date().getUTCFullYear()}-`);
    expect(reply.results[1]).toBeTypeOf('number');
    expect(await stored()).toEqual(['f2']);

    await first.todos.insert({ id: 'n1', title: 'now', done: false });
    expect((await first.sync.syncNow()).success).toBe(true);
    expect((await second.sync.syncNow()).success).toBe(true);
    expect((await contents(second.todos)).map((todo) => todo.id)).toEqual(['f2', 'n1']);
  });

  it('the bound is configurable, and false turns it off', async () => {
    server = await startServer({ maxClockDrift: 60_000 });
    const socket = await connect();
    const now = Date.now();
    const near = rawEvent({ documentId: 'c1', hlc: at(now + 30_000) });
    const far = rawEvent({ documentId: 'c2', hlc: at(now + 5 * 60_000) });
    const reply = await push(socket, [near, far]);
    expect(statuses(reply.results)).toEqual(['stored', 'rejected']);
    expect(reply.results[1].error).toMatchObject({ code: 'CLOCK_DRIFT', details: { maxClockDrift: 60_000 } });
    await server.stop();

    server = await startServer({ maxClockDrift: false });
    const other = await connect();
    const farOff = rawEvent({ documentId: 'c3', hlc: at(999_999_999_999_999) });
    expect((await push(other, [farOff])).results[0]).toBeTypeOf('number');
  });
});

interface User {
  id: string;
  tenant: string;
  role?: string;
}
const USERS: Record<string, User> = {
  alice: { id: 'alice', tenant: 'acme' },
  bob: { id: 'bob', tenant: 'acme' },
  eve: { id: 'eve', tenant: 'globex' },
  gina: { id: 'gina', tenant: 'globex' },
  // The same user, in a session opened with other rights: the same key, another user value.
  'alice-auditor': { id: 'alice', tenant: 'acme', role: 'auditor' },
};
const authenticate = (_socket: unknown, token: string | undefined) => (token ? USERS[token] : undefined);
/** Auditors read everything; everyone else their tenant's documents only. */
const mayRead = (user: User, document: Record<string, unknown>) => user.role === 'auditor' || document.owner === user.tenant;
const doc = (documentId: string, owner: string) => rawEvent({ documentId, data: { id: documentId, title: `${owner} ${documentId}`, done: false, owner } });
const ids = (events: { documentId: string }[]) => events.map((event) => event.documentId).sort();

async function subscribed(token: string) {
  const socket = await connect({ token });
  await request(socket, MESSAGE.subscribe, { collections: ['todos'] });
  return { socket, live: collectLive(socket) };
}

describe('live fan-out costs per user', () => {
  it.each([
    ['with per-user limits (the key from the handshake)', {}],
    ['without them (the key asked at fan-out)', { rateLimit: false as const }],
  ])('authorize is asked once per user and event, not per socket, %s', async (_name, extra) => {
    const reads = new Map<string, number>();
    const authorize: Authorize<User> = (user, _collection, operation, document) => {
      if (operation !== 'read') return document.owner === user.tenant;
      reads.set(user.id, (reads.get(user.id) ?? 0) + 1);
      return mayRead(user, document);
    };
    server = await startServer({ authenticate, authorize, ...extra });
    const readers = {
      alice: await Promise.all([subscribed('alice'), subscribed('alice'), subscribed('alice')]),
      bob: await Promise.all([subscribed('bob'), subscribed('bob')]),
      eve: await Promise.all([subscribed('eve'), subscribed('eve')]),
    };
    const gina = await connect({ token: 'gina' });
    // Gina may write globex documents only: two accepted, and fanned out.
    const ginaEvents = [doc('g3', 'globex'), doc('g4', 'globex'), doc('a3', 'acme')];
    reads.clear();
    const accepted = await push(gina, ginaEvents);
    expect(statuses(accepted.results)).toEqual(['stored', 'stored', 'rejected']);
    // The ack does not wait for the fan-out: its checks are counted once eve's sockets have their events.
    for (const { live } of readers.eve) await waitFor(() => live.length === 2, 'eve’s sockets to get globex’s events');
    await waitFor(() => [...reads.values()].reduce((sum, n) => sum + n, 0) >= 6, 'the fan-out to check every user');
    // Three users read two events each: six checks for seven sockets, where per socket they were fourteen.
    expect(Object.fromEntries(reads)).toEqual({ alice: 2, bob: 2, eve: 2 });
    for (const { live } of [...readers.alice, ...readers.bob]) expect(live).toEqual([]);
  });

  it('sockets of one user key whose user values differ are checked apart', async () => {
    const authorize: Authorize<User> = (user, _collection, operation, document) => (operation === 'read' ? mayRead(user, document) : document.owner === user.tenant);
    server = await startServer({ authenticate, authorize });
    const member = await subscribed('alice');
    const auditor = await subscribed('alice-auditor');
    const gina = await connect({ token: 'gina' });
    await push(gina, [doc('g1', 'globex')]);
    await waitFor(() => auditor.live.length === 1, 'the auditor session to get globex’s event');
    // Published after, on the same path: had it come to the member, it would be here by now.
    const alice = await connect({ token: 'alice' });
    await push(alice, [doc('a1', 'acme')]);
    await waitFor(() => member.live.length === 1 && auditor.live.length === 2, 'both sessions to get acme’s event');
    expect(ids(member.live)).toEqual(['a1']);
    expect(ids(auditor.live)).toEqual(['a1', 'g1']);
  });
});

describe('authorizeRead, the batch read authorizer', () => {
  /** Everyone may write and read 'shared' documents; everyone may write but nobody read the 'dropbox'. */
  function spies() {
    const calls: { user: string; collection: string; documents: number }[] = [];
    let readsThroughAuthorize = 0;
    const authorize: Authorize<User> = (user, _collection, operation, document) => {
      if (operation === 'read') readsThroughAuthorize++;
      return operation === 'read' ? mayRead(user, document) : [user.tenant, 'shared', 'dropbox'].includes(document.owner as string);
    };
    const authorizeRead: AuthorizeRead<User> = async (user, collection, documents) => {
      calls.push({ user: user.id, collection, documents: documents.length });
      return documents.map((document) => document.owner === 'shared' || (document.owner !== 'dropbox' && mayRead(user, document)));
    };
    return { calls, authorize, authorizeRead, readsThroughAuthorize: () => readsThroughAuthorize };
  }

  it('answers pulls and live messages with one call per page or per user, and nobody gets what they may not read', async () => {
    const spy = spies();
    server = await startServer({ authenticate, authorize: spy.authorize, authorizeRead: spy.authorizeRead });
    const alice = await subscribed('alice');
    const aliceToo = await subscribed('alice');
    const eve = await subscribed('eve');
    const bob = await connect({ token: 'bob' });
    const gina = await connect({ token: 'gina' });

    await push(bob, [doc('a1', 'acme'), doc('a2', 'acme'), doc('a3', 'acme')]);
    await push(gina, [doc('g1', 'globex')]);
    for (const reader of [alice, aliceToo]) await waitFor(() => reader.live.length === 3, 'alice’s sockets to get acme’s events');
    await waitFor(() => eve.live.length === 1, 'eve to get globex’s event');
    for (const reader of [alice, aliceToo]) expect(ids(reader.live)).toEqual(['a1', 'a2', 'a3']);
    expect(ids(eve.live)).toEqual(['g1']);
    // One call per user and push: alice (her two sockets together) and eve, for each of the two pushes.
    expect(spy.calls).toEqual([
      { user: 'alice', collection: 'todos', documents: 3 },
      { user: 'eve', collection: 'todos', documents: 3 },
      { user: 'alice', collection: 'todos', documents: 1 },
      { user: 'eve', collection: 'todos', documents: 1 },
    ]);

    spy.calls.splice(0);
    const evePull = await pull(eve.socket, { checkpoint: 0, collections: ['todos', 'notes'] });
    expect(ids(evePull.events)).toEqual(['g1']);
    expect(evePull.checkpoint).toBe(4);
    expect(spy.calls).toEqual([{ user: 'eve', collection: 'todos', documents: 4 }]);
    const alicePull = await pull(alice.socket, { checkpoint: 0, collections: ['todos'] });
    expect(ids(alicePull.events)).toEqual(['a1', 'a2', 'a3']);
    expect(spy.readsThroughAuthorize()).toBe(0);
  });

  it('decides what a conflict answer may show', async () => {
    const spy = spies();
    server = await startServer({ authenticate, authorize: spy.authorize, authorizeRead: spy.authorizeRead });
    const bob = await connect({ token: 'bob' });
    const alice = await connect({ token: 'alice' });
    const shared = doc('s1', 'shared');
    const dropped = doc('d1', 'dropbox');
    await push(bob, [shared, dropped]);
    // Alice claims both as new: a conflict with the head she may read, and one she may not see.
    const claim = await push(alice, [doc('s1', 'shared'), doc('d1', 'dropbox')]);
    expect(claim.results[0]).toMatchObject({ status: 'conflict', head: { eventId: shared.id } });
    expect(claim.results[1]).toMatchObject({ status: 'rejected', error: { code: 'UNAUTHORIZED' } });
    expect(JSON.stringify(claim.results[1])).not.toContain(dropped.id);
    expect(spy.calls).toEqual([
      { user: 'alice', collection: 'todos', documents: 1 },
      { user: 'alice', collection: 'todos', documents: 1 },
    ]);
    expect(spy.readsThroughAuthorize()).toBe(0);
  });

  it('an answer that is not one boolean per document, or a throw, leaves the pull undecided (AUTHORIZATION_FAILED)', async () => {
    let answer: () => boolean[] = () => [true];
    server = await startServer({ authenticate, authorizeRead: () => answer() });
    const alice = await connect({ token: 'alice' });
    await push(alice, [doc('a1', 'acme'), doc('a2', 'acme')]);
    const pullAll = () => pull(alice, { checkpoint: 0, collections: ['todos'] });
    expect(await pullAll()).toMatchObject({ ok: false, error: { code: 'AUTHORIZATION_FAILED' } });
    answer = () => {
      throw new Error('directory down');
    };
    expect(await pullAll()).toMatchObject({ ok: false, error: { code: 'AUTHORIZATION_FAILED' } });
    answer = () => [false, true];
    expect(ids((await pullAll()).events)).toEqual(['a2']);
  });

  it('is checked as an option', () => {
    const httpServer = createServer();
    expect(() => createSyncServer({ httpServer, logging: { enabled: false }, authorizeRead: 'yes' } as unknown as SyncServerOptions)).toThrow(/authorizeRead/);
  });
});
