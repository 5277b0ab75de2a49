/**
 * Authorization on every read and write, and sensitive fields: two tenants
 * share one server and neither ever sees or changes the other's documents.
 */
import type { Socket } from 'socket.io-client';
import { afterEach, describe, expect, it } from 'vitest';
import { MESSAGE, type StoredEvent } from '../src/shared/protocol/index.js';
import type { Authorize } from '../src/server/index.js';
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
  waitFor,
  type TestClient,
  type TestServer,
} from './helpers.js';

interface User {
  id: string;
  tenant: string;
}
const USERS: Record<string, User> = {
  alice: { id: 'alice', tenant: 'acme' },
  bob: { id: 'bob', tenant: 'acme' },
  eve: { id: 'eve', tenant: 'globex' },
  gina: { id: 'gina', tenant: 'globex' },
};
const authenticate = (_socket: unknown, token: string | undefined) => (token ? USERS[token] : undefined);
const sameTenant: Authorize<User> = (user, _collection, _operation, document) => document.owner === user.tenant;

let server: TestServer | undefined;
const sockets: Socket[] = [];
const clients: TestClient[] = [];

async function as(token: string) {
  const socket = await rawSocket(server!.url, { token });
  sockets.push(socket);
  return socket;
}

const doc = (documentId: string, owner: string, extra: Record<string, unknown> = {}) =>
  rawEvent({ documentId, data: { id: documentId, title: `${owner} ${documentId}`, done: false, owner, ...extra } });
const allStored = () => server!.server.getStorage().getEventsAfter(0);

afterEach(async () => {
  sockets.splice(0).forEach((socket) => socket.close());
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await server?.stop();
  server = undefined;
});

describe('tenants', () => {
  it("another tenant's documents cannot be written, and nothing of the attempt is stored", async () => {
    server = await startServer({ authenticate, authorize: sameTenant });
    const eve = await as('eve');
    const forged = doc('a1', 'acme');
    const own = doc('g1', 'globex');
    const reply = await push(eve, [forged, own]);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'UNAUTHORIZED', details: { documentId: 'a1' } } });
    expect(reply.results[1]).toBeTypeOf('number');
    expect((await allStored()).map((e) => e.documentId)).toEqual(['g1']);
  });

  it("pulls carry only the reader's tenant, while the checkpoint moves past the rest", async () => {
    server = await startServer({ authenticate, authorize: sameTenant });
    const alice = await as('alice');
    const eve = await as('eve');
    await push(alice, [doc('a1', 'acme'), doc('a2', 'acme')]);
    await push(eve, [doc('g1', 'globex')]);
    await push(alice, [doc('a3', 'acme')]);

    const evePull = await pull(eve, { checkpoint: 0, collections: ['todos'] });
    expect(evePull.events.map((e: StoredEvent) => e.documentId)).toEqual(['g1']);
    expect(evePull.checkpoint).toBe(4);

    // Paging one event at a time: pages of the other tenant come back empty, never with its documents.
    const seen: string[] = [];
    let checkpoint = 0;
    for (let hasMore = true; hasMore; ) {
      const page = await pull(eve, { checkpoint, collections: ['todos'], limit: 1 });
      seen.push(...page.events.map((e: StoredEvent) => e.documentId));
      ({ checkpoint, hasMore } = page);
    }
    expect(seen).toEqual(['g1']);

    const alicePull = await pull(alice, { checkpoint: 0, collections: ['todos'] });
    expect(alicePull.events.map((e: StoredEvent) => e.documentId)).toEqual(['a1', 'a2', 'a3']);
  });

  it("live broadcasts reach the writer's tenant only", async () => {
    server = await startServer({ authenticate, authorize: sameTenant });
    const [alice, bob, eve, gina] = await Promise.all(['alice', 'bob', 'eve', 'gina'].map(as));
    const bobLive = collectLive(bob!);
    const eveLive = collectLive(eve!);
    for (const socket of [alice, bob, eve, gina]) await request(socket!, MESSAGE.subscribe, { collections: ['todos'] });

    await push(alice!, [doc('a1', 'acme')]);
    await waitFor(() => bobLive.length === 1, 'bob to get the acme document');
    // Eve gets gina's later event; had the acme one been sent to her, it would have come first.
    await push(gina!, [doc('g1', 'globex')]);
    await waitFor(() => eveLive.length === 1, 'eve to get the globex document');
    expect(eveLive.map((e) => e.documentId)).toEqual(['g1']);
    expect(bobLive.map((e) => e.documentId)).toEqual(['a1']);
  });

  it("a document cannot be taken over by rewriting its owner, and a conflict answer never shows another tenant's version", async () => {
    server = await startServer({ authenticate, authorize: sameTenant });
    const alice = await as('alice');
    const eve = await as('eve');
    const original = doc('shared', 'acme', { title: 'acme secret plan' });
    await push(alice, [original]);

    // Claiming the id as new: without the check this is a conflict carrying acme's document.
    const claim = await push(eve, [doc('shared', 'globex')]);
    expect(claim.results[0]).toMatchObject({ status: 'rejected', error: { code: 'UNAUTHORIZED' } });
    expect(JSON.stringify(claim)).not.toContain('secret plan');

    // Knowing the head's event id: without the check this update would be accepted and move the document to globex.
    const takeover = rawEvent({
      documentId: 'shared',
      op: 'update',
      baseEventId: original.id,
      data: { id: 'shared', title: 'mine now', done: false, owner: 'globex' },
    });
    const reply = await push(eve, [takeover]);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'UNAUTHORIZED' } });
    const deletion = rawEvent({ documentId: 'shared', op: 'delete', baseEventId: original.id, data: { id: 'shared', owner: 'globex' } });
    expect((await push(eve, [deletion])).results[0].status).toBe('rejected');

    const events = await allStored();
    expect(events.map((e) => e.id)).toEqual([original.id]);
    const [head] = await server.server.getStorage().getHeads('todos', ['shared']);
    expect(head).toMatchObject({ eventId: original.id, deleted: false, data: { owner: 'acme' } });

    // The owner's own update still goes through.
    const edit = rawEvent({ documentId: 'shared', op: 'update', baseEventId: original.id, data: { ...original.data, done: true } });
    expect((await push(alice, [edit])).results[0]).toBeTypeOf('number');
  });

  it('a conflict on a document the writer may not read is answered UNAUTHORIZED, without the document', async () => {
    // A drop box: anyone may write into it, only the owner of an entry may read it.
    const dropBox: Authorize<User> = (user, _collection, operation, document) =>
      operation === 'read' ? document.owner === user.id : true;
    server = await startServer({ authenticate, authorize: dropBox });
    const alice = await as('alice');
    const eve = await as('eve');
    await push(alice, [doc('box', 'alice', { title: 'private note' })]);
    const reply = await push(eve, [doc('box', 'eve')]);
    expect(reply.results[0]).toMatchObject({ status: 'rejected', error: { code: 'UNAUTHORIZED' } });
    expect(JSON.stringify(reply)).not.toContain('private note');
    // Alice, who may read it, gets a normal conflict with the head.
    const own = await push(alice, [doc('box', 'alice')]);
    expect(own.results[0]).toMatchObject({ status: 'conflict', head: { data: { title: 'private note' } } });
  });

  it('an authorize function that throws fails the message with a retryable error, stores nothing, and the server keeps serving', async () => {
    let down = true;
    const flaky: Authorize<User> = (user, _collection, _operation, document) => {
      if (down && document.title === 'boom') throw new Error('policy service down');
      return document.owner === user.tenant;
    };
    server = await startServer({ authenticate, authorize: flaky });
    const alice = await as('alice');
    const failed = await push(alice, [doc('x', 'acme', { title: 'boom' }), doc('y', 'acme')]);
    expect(failed).toMatchObject({ ok: false, error: { code: 'AUTHORIZATION_FAILED' } });
    expect(await server.server.getStorage().countEvents()).toBe(0);
    const ok = await push(alice, [doc('y', 'acme')]);
    expect(ok.results[0]).toBeTypeOf('number');
    down = false;
    const retried = await push(alice, [doc('x', 'acme', { title: 'boom' })]);
    expect(retried.results[0]).toBeTypeOf('number');
    // A read it cannot decide fails the pull; the checkpoint does not move past the event.
    down = true;
    expect(await pull(alice, { checkpoint: 0, collections: ['todos'] })).toMatchObject({ ok: false, error: { code: 'AUTHORIZATION_FAILED' } });
    down = false;
    const pulled = await pull(alice, { checkpoint: 0, collections: ['todos'] });
    expect(pulled.events.map((e: StoredEvent) => e.documentId).sort()).toEqual(['x', 'y']);
  });
});

describe('the real client against a tenant policy', () => {
  it('shows a refused write as rejected, does not retry it, and keeps syncing everything else', async () => {
    server = await startServer({ authenticate, authorize: sameTenant });
    const start = async (token: string) => {
      const client = await startClient(server!.url, { authToken: token });
      clients.push(client);
      return client;
    };
    const [eve, gina, alice] = [await start('eve'), await start('gina'), await start('alice')];
    await waitFor(() => [eve, gina, alice].every((c) => c.sync.getStatus().connected), 'all connected');
    const errors: string[] = [];
    eve.sync.status$.subscribe((status) => status.error && errors.push(status.error.code));

    await eve.todos.insert({ id: 'forged', title: 'into acme', done: false, owner: 'acme' });
    await waitFor(() => eve.sync.getRejectedEvents().length === 1, 'the write to be rejected');
    const [rejected] = eve.sync.getRejectedEvents();
    expect(rejected).toMatchObject({ collection: 'todos', documentId: 'forged', error: { code: 'UNAUTHORIZED' } });
    expect(errors).toContain('UNAUTHORIZED');
    expect(eve.sync.getStatus()).toMatchObject({ rejectedEvents: 1, pendingEvents: 0 });
    // The refused document goes back to the server's version: it never existed there.
    await waitFor(async () => (await eve.todos.findOne('forged').exec()) === null, 'the refused insert to be undone');

    // Not retried: more sync runs push nothing more and the server stored nothing.
    const pushesBefore = server.server.getStats().rejected;
    await eve.sync.syncNow();
    await eve.sync.syncNow();
    expect(server.server.getStats().rejected).toBe(pushesBefore);
    expect(await server.server.getStorage().countEvents()).toBe(0);

    // Everything else keeps syncing, each tenant to its own.
    await eve.todos.insert({ id: 'g1', title: 'globex work', done: false, owner: 'globex' });
    await alice.todos.insert({ id: 'a1', title: 'acme work', done: false, owner: 'acme' });
    await waitFor(async () => (await gina.todos.findOne('g1').exec()) !== null, 'gina to get g1');
    for (const client of [eve, gina, alice]) expect((await client.sync.syncNow()).success).toBe(true);
    expect((await contents(eve.todos)).map((t) => t.id)).toEqual(['g1']);
    expect((await contents(gina.todos)).map((t) => t.id)).toEqual(['g1']);
    expect((await contents(alice.todos)).map((t) => t.id)).toEqual(['a1']);
    expect(eve.sync.getRejectedEvents()).toHaveLength(1);

    // Once the app has dealt with it: the list and the standing error go, for good (also after a restart).
    expect(eve.sync.getStatus().error).toMatchObject({ code: 'UNAUTHORIZED' });
    expect(await eve.sync.clearRejectedEvents()).toBe(1);
    expect(eve.sync.getRejectedEvents()).toEqual([]);
    expect(eve.sync.getStatus()).toMatchObject({ rejectedEvents: 0, error: null });
    await eve.close();
    const again = await startClient(server.url, { authToken: 'eve', name: eve.name });
    clients.push(again);
    expect(again.sync.getRejectedEvents()).toEqual([]);
  });
});

describe('sensitive fields', () => {
  it('are stripped from pulls, live events and conflict answers, and kept on the server', async () => {
    server = await startServer({ sensitiveFields: { todos: ['ssn', 'salary'] } });
    const writer = await rawSocket(server.url);
    const reader = await rawSocket(server.url);
    sockets.push(writer, reader);
    const live = collectLive(reader);
    await request(reader, MESSAGE.subscribe, { collections: ['todos', 'notes'] });

    const created = rawEvent({ documentId: 'p1', data: { id: 'p1', title: 'Ann', ssn: '123-45-6789', salary: 100 } });
    await push(writer, [created]);
    const updated = rawEvent({
      documentId: 'p1',
      op: 'update',
      baseEventId: created.id,
      data: { id: 'p1', title: 'Ann B', ssn: '987-65-4321', salary: 120 },
      patch: [
        { op: 'replace', path: '/title', value: 'Ann B' },
        { op: 'replace', path: '/ssn', value: '987-65-4321' },
        { op: 'replace', path: '/salary', value: 120 },
        { op: 'copy', from: '/ssn', path: '/title' },
      ],
    });
    await push(writer, [updated]);
    // Other collections are not affected by the per-collection list.
    await push(writer, [rawEvent({ documentId: 'n1', collection: 'notes', data: { ssn: 'not secret here' } })]);

    await waitFor(() => live.length === 3, 'the live events');
    const pulled = (await pull(reader, { checkpoint: 0, collections: ['todos'] })).events as StoredEvent[];
    for (const event of [...live.filter((e) => e.collection === 'todos'), ...pulled]) {
      expect(event.data).not.toHaveProperty('ssn');
      expect(event.data).not.toHaveProperty('salary');
      expect(JSON.stringify(event)).not.toMatch(/\d{3}-\d{2}-\d{4}/);
    }
    // A pull carries each document's latest change; no patch leaves the server (it could name a sensitive field).
    const latest = pulled.find((e) => e.id === updated.id)!;
    expect(latest.data).toEqual({ id: 'p1', title: 'Ann B' });
    for (const event of [latest, live.find((e) => e.id === updated.id)!]) {
      expect(event).not.toHaveProperty('patch');
      expect(event).not.toHaveProperty('baseEventId');
    }
    expect(live.find((e) => e.collection === 'notes')!.data).toEqual({ ssn: 'not secret here' });

    // A client that never saw the fields writes the document: the server keeps them.
    const edit = rawEvent({ documentId: 'p1', op: 'update', baseEventId: updated.id, data: { ...latest.data, title: 'Ann C' } });
    expect((await push(reader, [edit])).results[0]).toBeTypeOf('number');
    const [head] = await server.server.getStorage().getHeads('todos', ['p1']);
    expect(head!.data).toEqual({ id: 'p1', title: 'Ann C', ssn: '987-65-4321', salary: 120 });

    // A conflict answer carries the head without them.
    const stale = await push(reader, [rawEvent({ documentId: 'p1', data: { id: 'p1', title: 'x' } })]);
    expect(stale.results[0]).toMatchObject({ status: 'conflict', head: { eventId: edit.id, data: { id: 'p1', title: 'Ann C' } } });
    expect(stale.results[0].head.data).not.toHaveProperty('ssn');
  });

  it('a list for all collections applies to every collection, and to live events without an authorize function', async () => {
    server = await startServer({ sensitiveFields: ['passwordHash'] });
    const writer = await rawSocket(server.url);
    const reader = await rawSocket(server.url);
    sockets.push(writer, reader);
    const live = collectLive(reader);
    await request(reader, MESSAGE.subscribe, { collections: ['users'] });
    await push(writer, [rawEvent({ documentId: 'u1', collection: 'users', data: { id: 'u1', name: 'Ann', passwordHash: '$2b$hash' } })]);
    await waitFor(() => live.length === 1, 'the live event');
    expect(live[0]!.data).toEqual({ id: 'u1', name: 'Ann' });
    const pulled = await pull(reader, { checkpoint: 0, collections: ['users'] });
    expect(pulled.events[0].data).toEqual({ id: 'u1', name: 'Ann' });
    expect((await allStored())[0]!.data.passwordHash).toBe('$2b$hash');
  });

  it('reach no real client, and survive that client editing the document', async () => {
    server = await startServer({ sensitiveFields: ['tags'] });
    const a = await startClient(server.url);
    const b = await startClient(server.url);
    clients.push(a, b);
    await a.todos.insert({ id: 't1', title: 'with tags', done: false, tags: ['internal'] });
    await waitFor(async () => (await b.todos.findOne('t1').exec()) !== null, 'b to get t1');
    expect((await b.todos.findOne('t1').exec())!.toJSON()).not.toHaveProperty('tags');
    await (await b.todos.findOne('t1').exec())!.patch({ done: true });
    await waitFor(async () => (await a.todos.findOne('t1').exec())?.done === true, 'a to get the edit');
    const [head] = await server.server.getStorage().getHeads('todos', ['t1']);
    expect(head!.data).toMatchObject({ done: true, tags: ['internal'] });
  });
});
