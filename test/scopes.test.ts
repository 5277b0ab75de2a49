/**
 * Sync scopes (issue 26): a device holds only the documents of its scope;
 * a document that moves out leaves it without a pending event (after its
 * own unpushed changes are pushed), one that moves in arrives, and a scope
 * change transfers only the difference. The server's rule narrows what a
 * client asks for, and selectors scopes do not support are refused.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import type { RxDatabase } from 'rxdb';
import { afterEach, describe, expect, it } from 'vitest';
import { createSyncPlugin, SyncError, type ScopeSelector } from '../src/client/index.js';
import { MetaStore } from '../src/client/meta-store.js';
import { Replicator } from '../src/client/replicator.js';
import { strategyFor } from '../src/client/strategies/index.js';
import { createLogger } from '../src/shared/logger.js';
import { MemorySyncStorage, matchesScope, parseScope, type SyncStorage } from '../src/server/index.js';
import { contents, openDatabase, outcome, rawSocket, request, sleep, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer, type Todo } from './helpers.js';
import { MESSAGE, PROTOCOL_VERSION } from '../src/shared/protocol/index.js';

const servers: TestServer[] = [];
const clients: TestClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

async function server(options: Parameters<typeof startServer>[0] = {}) {
  const started = await startServer({ scopeFields: { todos: ['owner', 'priority'] }, ...options });
  servers.push(started);
  return started;
}

async function client(url: string, options: Parameters<typeof startClient>[1] = {}) {
  const started = await startClient(url, { syncInterval: 600_000, ...options });
  clients.push(started);
  return started;
}

/** The server's documents (heads that are not deleted), by id. */
async function serverDocs(storage: SyncStorage): Promise<Todo[]> {
  const heads = new Map<string, { deleted: boolean; data: Todo }>();
  for (const event of await storage.getEventsAfter(0)) heads.set(event.documentId, { deleted: event.op === 'delete', data: event.data as unknown as Todo });
  return [...heads.values()].filter((head) => !head.deleted).map((head) => head.data).sort((a, b) => a.id.localeCompare(b.id));
}

const ids = async (c: TestClient) => (await contents(c.todos)).map((todo) => todo.id);
const idle = (c: TestClient) => c.sync.getStatus().pendingEvents === 0;

/** Events the server sent in pull replies, counted from its `pull` events. */
function pulledEvents(started: TestServer): () => number {
  let count = 0;
  started.server.events.on('pull', ({ events }: { events: number }) => (count += events));
  return () => count;
}

async function seed(writer: TestClient, todos: Todo[]) {
  await writer.todos.bulkInsert(todos);
  await writer.sync.syncNow();
  await waitFor(() => idle(writer), 'the seed to be pushed');
}

const todo = (id: string, owner: string, priority = 1): Todo => ({ id, title: id, done: false, owner, priority });

/** Live messages the server sends are held (in order) until `release()`. */
function holdLive(started: TestServer) {
  const adapter = started.server.getIo().of('/').adapter;
  const broadcast = adapter.broadcast.bind(adapter);
  const held: (() => void)[] = [];
  adapter.broadcast = (packet, opts) => (packet.data?.[0] === MESSAGE.live ? held.push(() => broadcast(packet, opts)) : broadcast(packet, opts));
  return {
    held: () => held.length,
    release: () => {
      adapter.broadcast = broadcast;
      for (const send of held.splice(0)) send();
    },
  };
}

/**
 * The next call of `method` (after `skip` more) reads the storage, then
 * answers only once `open()` is called; `before`: it waits before it reads.
 */
function gateNext(storage: SyncStorage, method: 'getChangesAfter' | 'getScopedChanges', { skip = 0, before = false } = {}) {
  const original = storage[method] as (...args: never[]) => Promise<unknown>;
  let open!: () => void;
  let reached = false;
  const opened = new Promise<void>((resolve) => (open = resolve));
  storage[method] = async function (this: SyncStorage, ...args: never[]) {
    if (skip-- > 0) return original.apply(this, args);
    storage[method] = original as never;
    if (before) {
      reached = true;
      await opened;
    }
    const page = await original.apply(this, args);
    reached = true;
    await opened;
    return page;
  } as never;
  return { reached: () => reached, open };
}

/** Scoped reads show nothing from `seq` on, as a storage does while a lower sequence still commits (PostgreSQL). */
function hideFrom(storage: SyncStorage, seq: number): () => void {
  const original = storage.getScopedChanges;
  storage.getScopedChanges = async function (this: SyncStorage, checkpoint, query) {
    const page = await original.call(this, checkpoint, query);
    return Object.assign(page.filter((change) => change.seq < seq), { through: Math.min(page.through, seq - 1) });
  };
  return () => (storage.getScopedChanges = original);
}

/**
 * The device's own a (c1) is pushed and its first scoped page waits before
 * it reads, while the office hands a to crew c2 (the device hears nothing
 * live) and adds b1, b2 for c1. The caller opens the page and releases live.
 */
async function firstPageWhileAMovesOut(s: TestServer, office: TestClient, crew: TestClient) {
  await crew.todos.insert(todo('a', 'c1'));
  const first = gateNext(s.server.getStorage(), 'getScopedChanges', { before: true });
  const syncing = outcome(crew.sync.syncNow());
  await waitFor(first.reached, 'the first page to be asked for');
  const live = holdLive(s);
  await office.todos.upsert(todo('a', 'c2'));
  await office.todos.bulkInsert([todo('b1', 'c1'), todo('b2', 'c1')]);
  await waitFor(() => idle(office) && office.sync.getStatus().conflicts === 0, 'the office to push');
  return { first, syncing, live };
}

const owners = async (c: TestClient) => (await contents(c.todos)).map((t) => `${t.id}:${t.owner}`).join();

describe('sync scopes', () => {
  it('a device holds only its scope; moves in and out arrive live, without pending events', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a1', 'c1'), todo('a2', 'c1'), todo('b1', 'c2'), todo('b2', 'c2')]);

    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await crew.sync.syncNow();
    expect(await ids(crew)).toEqual(['a1', 'a2']);

    // Moved out by another device: it leaves, live.
    await (await office.todos.findOne('a2').exec())!.incrementalPatch({ owner: 'c2' });
    await waitFor(async () => (await ids(crew)).join() === 'a1', 'a2 to leave the crew device', 10_000);
    // Moved in: it arrives.
    await (await office.todos.findOne('b1').exec())!.incrementalPatch({ owner: 'c1' });
    await waitFor(async () => (await ids(crew)).join() === 'a1,b1', 'b1 to arrive on the crew device', 10_000);
    expect(crew.sync.getStatus().pendingEvents).toBe(0);
    // Leaving is local only: the office still holds a2, and nothing was deleted on the server.
    expect((await serverDocs(s.server.getStorage())).map((t) => t.id)).toEqual(['a1', 'a2', 'b1', 'b2']);
  });

  it('a scope change transfers only the difference', async () => {
    const s = await server();
    const office = await client(s.url);
    const seeded = [
      ...Array.from({ length: 20 }, (_, i) => todo(`a${i}`, 'c1')),
      ...Array.from({ length: 5 }, (_, i) => todo(`b${i}`, 'c2')),
      ...Array.from({ length: 30 }, (_, i) => todo(`z${i}`, 'c3')),
    ];
    await seed(office, seeded);
    const pulled = pulledEvents(s);

    const crew = await client(s.url, { scopes: { todos: { owner: { $in: ['c1', 'c2'] } } } });
    await crew.sync.syncNow();
    expect((await ids(crew)).length).toBe(25);
    expect(pulled()).toBe(25);

    // Narrowed: the c2 documents leave, nothing is sent.
    crew.sync.setScope('todos', { owner: 'c1' });
    await waitFor(async () => (await ids(crew)).length === 20, 'the c2 documents to leave');
    await crew.sync.syncNow();
    expect(pulled()).toBe(25);
    expect(crew.sync.getStatus().pendingEvents).toBe(0);

    // Widened to c1 and c3: only the 30 c3 documents travel, not the 20 held.
    crew.sync.setScope('todos', { owner: { $in: ['c1', 'c3'] } });
    await waitFor(async () => (await ids(crew)).length === 50, 'the c3 documents to arrive');
    expect(pulled()).toBe(55);
    expect((await contents(crew.todos)).every((t) => t.owner === 'c1' || t.owner === 'c3')).toBe(true);
  });

  it('a document moved out by an unpushed local change is pushed first, then leaves', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a1', 'c1'), todo('a2', 'c1')]);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await crew.sync.syncNow();
    expect(await ids(crew)).toEqual(['a1', 'a2']);

    crew.sync.disable();
    // Handed over to crew c2 while offline, with a note: the change must reach the server before a2 leaves.
    await (await crew.todos.findOne('a2').exec())!.incrementalPatch({ owner: 'c2', title: 'handed over' });
    expect(await ids(crew)).toEqual(['a1', 'a2']);
    crew.sync.enable();
    await waitFor(async () => (await ids(crew)).join() === 'a1' && idle(crew), 'a2 to be pushed, then leave', 10_000);
    expect((await serverDocs(s.server.getStorage())).find((t) => t.id === 'a2')).toMatchObject({ owner: 'c2', title: 'handed over' });
    await waitFor(async () => (await office.todos.findOne('a2').exec())?.title === 'handed over', 'the office to get the handover');
  });

  it('a document that moved out while the device was offline leaves when it syncs again, after compaction too', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a1', 'c1'), todo('a2', 'c1'), todo('a3', 'c1')]);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await crew.sync.syncNow();
    crew.sync.disable();
    await (await office.todos.findOne('a2').exec())!.incrementalPatch({ owner: 'c2' });
    await (await office.todos.findOne('a3').exec())!.incrementalPatch({ title: 'renamed' });
    await (await office.todos.findOne('a3').exec())!.incrementalPatch({ owner: 'c2' });
    await waitFor(() => idle(office), 'the office to push');
    // Everything superseded is compacted away: the versions the crew device holds are gone from the log.
    const storage = s.server.getStorage();
    await storage.clearEventsBefore((await storage.getLatestSequence()) + 1);
    crew.sync.enable();
    await crew.sync.syncNow();
    await waitFor(async () => (await ids(crew)).join() === 'a1', 'a2 and a3 to leave', 10_000);
  });

  it('the server rule narrows what a client asks for, and a client cannot widen it', async () => {
    const s = await server({
      authenticate: (_socket, token) => (token ? { id: token, crew: token.split('-')[0] } : null),
      scopes: (user: { crew: string }) => ({ owner: user.crew }),
    });
    const office = await client(s.url, { authToken: 'office-1' });
    // The office's own rule scope holds only owner "office": it writes documents of other crews and they leave it.
    await office.todos.bulkInsert([todo('a1', 'c1', 1), todo('a2', 'c1', 3), todo('b1', 'c2', 3)]);
    await waitFor(async () => (await serverDocs(s.server.getStorage())).length === 3, 'the office to push');

    const c1 = await client(s.url, { authToken: 'c1-phone', scopes: { todos: { priority: { $gte: 2 } } } });
    await c1.sync.syncNow();
    expect(await ids(c1)).toEqual(['a2']);
    // Asking for everything still gives only the rule's scope.
    const wide = await client(s.url, { authToken: 'c1-tablet' });
    await wide.sync.syncNow();
    await waitFor(async () => (await ids(wide)).join() === 'a1,a2', 'the rule to hold an unscoped client to its crew');
    // Asking for another crew gives nothing of it.
    const nosy = await client(s.url, { authToken: 'c1-laptop', scopes: { todos: { owner: 'c2' } } });
    await nosy.sync.syncNow();
    expect(await ids(nosy)).toEqual([]);
    // Live: a c2 write never reaches c1 devices.
    await office.todos.insert(todo('b2', 'c2', 5));
    await office.todos.insert(todo('a3', 'c1', 5));
    await waitFor(async () => (await ids(c1)).join() === 'a2,a3', 'the c1 write to arrive live');
    expect(await ids(nosy)).toEqual([]);
  });

  it('refuses selectors that scopes do not support, with the part named', async () => {
    expect(() => createSyncPlugin({ serverUrl: 'http://localhost:1', collections: ['todos'], scopes: { todos: { title: { $regex: 'x' } } } as never })).toThrow(/\$regex is not supported/);
    expect(() => createSyncPlugin({ serverUrl: 'http://localhost:1', collections: ['todos'], scopes: { todos: { 'a.b': 1 } } })).toThrow(/top-level fields only/);
    expect(() => createSyncPlugin({ serverUrl: 'http://localhost:1', collections: ['todos'], scopes: { todos: { done: { $gt: true } } } })).toThrow(/booleans have no order/);
    expect(() => createSyncPlugin({ serverUrl: 'http://localhost:1', collections: ['todos'], scopes: { todos: { owner: 'a\u0000b' } } })).toThrow(/NUL character or an unpaired surrogate/);
    const s = await server();
    const c = await client(s.url);
    expect(() => c.sync.setScope('todos', { $or: [{ owner: 'x' }] } as unknown as ScopeSelector)).toThrow(SyncError);

    // The server refuses a field it did not declare, and a pull naming it stores and sends nothing.
    const socket = await rawSocket(s.url, { clientId: 'c-raw-scope', protocolVersion: PROTOCOL_VERSION });
    const reply = await request(socket, 'sync:pull', { checkpoint: 0, collections: ['todos'], scope: { want: { title: 'x' }, held: null, through: 0 } });
    expect(reply).toMatchObject({ ok: false, error: { code: 'INVALID_SCOPE' } });
    expect(reply.error.message).toMatch(/"title" is not a scope field of "todos"/);
    const subscribed = await request(socket, 'sync:subscribe', { collections: ['todos'], scopes: { todos: { owner: { $exists: true } } } });
    expect(subscribed).toMatchObject({ ok: false, error: { code: 'INVALID_SCOPE' } });
    socket.disconnect();
  });
});

/**
 * Each race below once left a device with a document missing for good: a
 * message answered for a state the device no longer held was taken as an
 * answer for the state it held.
 */
describe('sync scopes: messages that cross a change of what a device holds', () => {
  it('a plain page asked for before the collection held a scope moves no checkpoint of its catch-up', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a', 'c1'), todo('b', 'c2')]);
    const crew = await client(s.url);
    await crew.sync.syncNow();
    expect(await ids(crew)).toEqual(['a', 'b']);

    // A pull of everything is read and on its way back when the device narrows its scope,
    const gate = gateNext(s.server.getStorage(), 'getChangesAfter');
    const syncing = outcome(crew.sync.syncNow());
    await waitFor(gate.reached, 'the pull to be read');
    crew.sync.setScope('todos', { owner: 'c1' });
    // and a live change takes b out of it: b leaves, and the device holds its scope as of nothing.
    await (await office.todos.findOne('b').exec())!.incrementalPatch({ owner: 'c3' });
    await waitFor(async () => (await ids(crew)).join() === 'a', 'b to leave');
    gate.open();
    await syncing;
    // The catch-up of the scope starts from nothing, so a (held, in the scope) is confirmed, not dropped.
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await ids(crew)).join() === 'a', 'the device to hold a');
  });

  it('a live change that arrives while the first scoped page is on its way stays', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a', 'c1')]);
    const gate = gateNext(s.server.getStorage(), 'getScopedChanges');
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await waitFor(gate.reached, 'the first scoped page to be read');
    await office.todos.insert(todo('f', 'c1'));
    await waitFor(async () => (await ids(crew)).join() === 'f', 'f to arrive live');
    gate.open();
    // The page, read before f, does not name it; f was confirmed as it arrived and stays.
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await ids(crew)).join() === 'a,f', 'the device to hold a and f');
  });

  it('a first catch-up cut short by a restart starts again from nothing, and keeps what it brought', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a1', 'c1'), todo('a2', 'c1'), todo('a3', 'c1')]);
    const name = uniqueName('crew');
    // Pages of one document: the device closes while its second page is on its way.
    const gate = gateNext(s.server.getStorage(), 'getScopedChanges', { skip: 1 });
    const crew = await client(s.url, { name, scopes: { todos: { owner: 'c1' } }, pullBatchSize: 1 });
    await waitFor(gate.reached, 'the second page to be read');
    expect(await ids(crew)).toEqual(['a1']);
    await crew.close();
    gate.open();
    const again = await client(s.url, { name, scopes: { todos: { owner: 'c1' } }, pullBatchSize: 1 });
    await waitFor(async () => (await outcome(again.sync.syncNow())).success && (await ids(again)).join() === 'a1,a2,a3', 'the device to hold the whole scope');
  });

  it('a first catch-up cut into pages names where it began: its pages judge only what moved out after', async () => {
    const s = await server();
    const storage = s.server.getStorage();
    const office = await client(s.url);
    await seed(office, [todo('a1', 'c1'), todo('a2', 'c1'), todo('a3', 'c1'), todo('x', 'c1')]);
    await office.todos.upsert(todo('x', 'c2')); // out of the scope before the device ever syncs
    await office.sync.syncNow();
    const began = await storage.getLatestSequence();
    const asked: { checkpoint: number; through: number; start?: number }[] = [];
    const read = storage.getScopedChanges;
    storage.getScopedChanges = function (this: SyncStorage, checkpoint, query) {
      asked.push({ checkpoint, through: query.held.through, ...(query.start !== undefined ? { start: query.start } : {}) });
      return read.call(this, checkpoint, query);
    };
    // The second page waits while a1, which the first sent, moves out with no live message to say so.
    const gate = gateNext(storage, 'getScopedChanges', { skip: 1, before: true });
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } }, pullBatchSize: 1 });
    await waitFor(gate.reached, 'the second page to be asked for');
    const live = holdLive(s);
    await office.todos.upsert(todo('a1', 'c2'));
    await waitFor(() => idle(office), 'the office to push');
    gate.open();
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await ids(crew)).join() === 'a2,a3', 'the device to hold a2 and a3');
    live.release();
    const catchUp = asked.filter((query) => query.through === 0);
    // The server reads where the catch-up begins for its first page; the device names it on every later one.
    expect(catchUp[0]!.checkpoint).toBe(0);
    expect(catchUp.length).toBeGreaterThan(2);
    for (const page of catchUp) expect(page).toMatchObject({ start: began });
  });

  it("a first catch-up drops the device's own write that it read past out of the scope", async () => {
    const s = await server();
    const office = await client(s.url);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } }, autoSync: false });
    const { first, syncing, live } = await firstPageWhileAMovesOut(s, office, crew);
    first.open();
    await syncing;
    live.release();
    // The page from 0 names no leaves: a, confirmed by its push before the page, is not by the page.
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await ids(crew)).join() === 'b1,b2', 'the device to hold b1 and b2 only');
  });

  it('a scope change in the middle of a first catch-up starts the next from nothing too', async () => {
    const s = await server();
    const office = await client(s.url);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } }, autoSync: false, pullBatchSize: 1 });
    const { first, syncing, live } = await firstPageWhileAMovesOut(s, office, crew);
    // The first page (b1) reads past a's move; before the next, the device asks for c1 and c3.
    crew.sync.setScope('todos', { owner: { $in: ['c1', 'c3'] } });
    first.open();
    await syncing;
    live.release();
    // Held as of nothing still, the move to c1 and c3 confirms what it keeps: a (at c2 now) leaves.
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await ids(crew)).join() === 'b1,b2', 'the device to hold b1 and b2 only');
  });

  it('after a restart, a first catch-up cut short still drops what it passed over out of the scope', async () => {
    const s = await server();
    const storage = s.server.getStorage();
    const office = await client(s.url);
    const name = uniqueName('crew');
    const crew = await client(s.url, { name, scopes: { todos: { owner: 'c1' } }, pullBatchSize: 1, autoSync: false });
    const { first, syncing, live } = await firstPageWhileAMovesOut(s, office, crew);
    // The first page (b1) reads past a's move and does not name it; the device closes before the second.
    const second = gateNext(storage, 'getScopedChanges');
    first.open();
    await waitFor(second.reached, 'the second page to be read');
    await crew.close();
    second.open();
    live.release();
    await syncing.catch(() => undefined);
    const again = await client(s.url, { name, scopes: { todos: { owner: 'c1' } }, pullBatchSize: 1 });
    await waitFor(async () => (await outcome(again.sync.syncNow())).success && (await ids(again)).join() === 'b1,b2', 'the device to hold b1 and b2 only');
  });

  it('a leave judged in the scope held before a move, arriving after it, leaves nothing out', async () => {
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a', 'c1'), todo('d', 'c1')]);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await crew.sync.syncNow();
    const live = holdLive(s);
    // d goes to crew c2: the leave the server sends the device, judged in scope c1, is held on its way.
    await (await office.todos.findOne('d').exec())!.incrementalPatch({ owner: 'c2' });
    await waitFor(() => live.held() > 0, 'the leave to be sent');
    // Meanwhile the device widens its scope to c2, and the move brings d as it is now.
    crew.sync.setScope('todos', { owner: { $in: ['c1', 'c2'] } });
    await waitFor(async () => (await owners(crew)) === 'a:c1,d:c2', 'd to come with the move');
    live.release();
    await office.todos.insert(todo('e', 'c1'));
    await waitFor(async () => (await ids(crew)).includes('e'), 'e to arrive live, after the late leave');
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await owners(crew)) === 'a:c1,d:c2,e:c1', 'd to stay');
  });

  it('a late leave past what the move could read is settled by a pull, not counted as held', async () => {
    const s = await server();
    const storage = s.server.getStorage();
    const office = await client(s.url);
    await seed(office, [todo('a', 'c1'), todo('d', 'c1')]);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await crew.sync.syncNow();
    const live = holdLive(s);
    await (await office.todos.findOne('d').exec())!.incrementalPatch({ owner: 'c2' });
    await waitFor(() => live.held() > 0, 'the leave to be sent');
    // The move to c1 and c2 cannot read d's new version yet (a lower sequence still commits):
    const moved = await storage.getLatestSequence();
    const show = hideFrom(storage, moved);
    crew.sync.setScope('todos', { owner: { $in: ['c1', 'c2'] } });
    await crew.sync.syncNow();
    show();
    // then the leave, judged in c1, arrives past where the move ended: d leaves, and the next pull brings it back.
    live.release();
    await waitFor(async () => !(await ids(crew)).includes('d'), 'd to leave on the late leave');
    await waitFor(async () => (await outcome(crew.sync.syncNow())).success && (await owners(crew)) === 'a:c1,d:c2', 'd to be held as it is now');
  });

  it('sync stops as soon as the database starts to close, before RxDB ends its change events', async () => {
    // Sync that went on after the change events ended wrote what no query saw: a move listed the
    // documents through a query then, left one out, and it stayed outside the scope for good.
    const s = await server();
    const office = await client(s.url);
    await seed(office, [todo('a', 'c1', 1)]);
    const crew = await client(s.url, { scopes: { todos: { owner: 'c1' } } });
    await crew.sync.syncNow();
    expect(await ids(crew)).toEqual(['a']);
    // RxDB ends its change events, then waits for its idle queue (held here) before it runs db.onClose.
    let release!: () => void;
    const locked = crew.db.lockedRun(() => new Promise<void>((resolve) => (release = resolve)));
    let stopped = false;
    crew.db.eventBulks$.subscribe({ complete: () => (stopped = true) });
    const closing = crew.close();
    try {
      await waitFor(() => stopped, 'the change events to end');
      await office.todos.insert(todo('b', 'c1', 3));
      await waitFor(() => idle(office), 'the office to push');
      await expect(crew.sync.syncNow()).rejects.toMatchObject({ code: 'CLOSED' });
      expect(await crew.todos.storageInstance.findDocumentsById(['b'], false)).toEqual([]);
    } finally {
      release();
      await locked;
      await closing;
    }
  });
});

/** Leaving is the plugin's own local write: it never takes an edit of the app's with it, nor passes for one. */
describe('sync scopes: the local write of a leave', () => {
  const databases: Awaited<ReturnType<typeof openDatabase>>[] = [];
  afterEach(async () => {
    await Promise.all(databases.splice(0).map((db) => db.close()));
  });

  /** A replicator over a fresh database that holds d (in scope c1) as the server sent it, at sequence 1. */
  async function holdingD() {
    const db = await openDatabase(uniqueName('leave'));
    databases.push(db);
    const replicator = new Replicator(db as unknown as RxDatabase, await MetaStore.open(db as unknown as RxDatabase), () => strategyFor('last-write-wins'), createLogger({ enabled: false, level: 'error' }, 'test'));
    await replicator.load();
    const d = { id: 'remote-d-0000001', collection: 'todos', documentId: 'd', op: 'insert' as const, data: { ...todo('d', 'c1') }, hlc: '001700000000000-000000-other', seq: 1, clientId: 'other' };
    await replicator.applyRemote([d], 'pull', { collections: ['todos'], seq: 1 });
    return { db, replicator };
  }

  it('a document the app edited, not yet logged, stays; its edit is logged as the app made it', async () => {
    const { db, replicator } = await holdingD();
    // The app's edit reaches storage; before it is logged, the server says d left at sequence 2.
    await (await db.todos.findOne('d').exec())!.incrementalPatch({ title: 'edited' });
    expect(await replicator.leaveAt('todos', [{ documentId: 'd', seq: 2 }], parseScope({ owner: 'c1' }))).toBe(0);
    expect((await db.todos.findOne('d').exec())?.title).toBe('edited');
    await replicator.recordLocalChanges('todos', ['d']);
    expect(replicator.pending.forDocument('todos', 'd').map((entry) => [entry.event.op, entry.event.data.title])).toEqual([['update', 'edited']]);
  });

  it('the tombstone of a document that left is not logged as a delete when the storage is read again', async () => {
    const { db, replicator } = await holdingD();
    expect(await replicator.leaveAt('todos', [{ documentId: 'd', seq: 2 }], parseScope({ owner: 'c1' }))).toBe(1);
    expect(await db.todos.findOne('d').exec()).toBeNull();
    // As after a restart (or when another tab takes the lead): every change after the logged checkpoint is read.
    await replicator.recover('todos');
    expect(replicator.pending.forDocument('todos', 'd')).toEqual([]);
  });
});

/**
 * Devices whose scopes change while documents are reassigned, deleted and
 * compacted, and devices go offline and restart. A failure prints its seed
 * and path (FC_SEED, FC_NUM_RUNS to replay or run longer); SCOPE_CASE names
 * a file holding one case as JSON, to run it alone.
 */
describe('randomized scoped convergence', () => {
  const OWNERS = ['c1', 'c2', 'c3'];
  const DOCS = ['d0', 'd1', 'd2', 'd3', 'd4', 'd5'];
  const DEVICES = 3;
  const NUM_RUNS = Number(process.env.FC_NUM_RUNS ?? 150);
  const SEED = process.env.FC_SEED ? Number(process.env.FC_SEED) : Date.now() % 2 ** 31;
  type Command =
    | { kind: 'put'; device: number; doc: string; owner: string; priority: number }
    | { kind: 'remove'; device: number; doc: string }
    | { kind: 'scope'; device: number; scope: ScopeSelector | null }
    | { kind: 'offline'; device: number }
    | { kind: 'online'; device: number }
    | { kind: 'restart'; device: number }
    | { kind: 'compact' }
    | { kind: 'pause'; ms: number };
  const device = fc.integer({ min: 0, max: DEVICES - 1 });
  const scopeArb: fc.Arbitrary<ScopeSelector | null> = fc.oneof(
    fc.constant(null),
    fc.constantFrom(...OWNERS).map((owner) => ({ owner })),
    fc.subarray(OWNERS, { minLength: 1 }).map((owners) => ({ owner: { $in: owners } })),
    fc.integer({ min: 1, max: 3 }).map((min) => ({ priority: { $gte: min } })),
    fc.tuple(fc.constantFrom(...OWNERS), fc.integer({ min: 1, max: 3 })).map(([owner, max]): ScopeSelector => ({ $and: [{ owner }, { priority: { $lte: max } }] })),
  );
  const command: fc.Arbitrary<Command> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('put' as const), device, doc: fc.constantFrom(...DOCS), owner: fc.constantFrom(...OWNERS), priority: fc.integer({ min: 1, max: 3 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), device, doc: fc.constantFrom(...DOCS) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('scope' as const), device, scope: scopeArb }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('offline' as const), device }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('online' as const), device }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('restart' as const), device }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'compact' as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('pause' as const), ms: fc.integer({ min: 1, max: 20 }) }) },
  );

  it('every device ends holding exactly the server documents of its scope', async () => {
    console.log(`scoped convergence: seed ${SEED}, ${NUM_RUNS} runs (FC_SEED / FC_NUM_RUNS to change)`);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(device, scopeArb), { minLength: DEVICES, maxLength: DEVICES }), fc.array(command, { minLength: 5, maxLength: 30 }), async (initial, commands) => {
        if (process.env.SCOPE_CASE) [initial, commands] = JSON.parse(readFileSync(process.env.SCOPE_CASE, 'utf8'));
        const storage = new MemorySyncStorage();
        const s = await startServer({ storage, scopeFields: { todos: ['owner', 'priority'] } });
        const devices: TestClient[] = [];
        const scopes: (ScopeSelector | null)[] = initial.map(([, scope]) => scope);
        try {
          const open = (name: string, i: number) => startClient(s.url, { name, syncInterval: 200, scopes: scopes[i] ? { todos: scopes[i]! } : {} });
          for (let i = 0; i < DEVICES; i++) devices.push(await open(uniqueName('scoped'), i));
          let n = 0;
          for (const cmd of commands) {
            switch (cmd.kind) {
              case 'put': {
                const c = devices[cmd.device]!;
                await c.todos.upsert({ id: cmd.doc, title: `w${n++}`, done: false, owner: cmd.owner, priority: cmd.priority });
                await sleep(2);
                break;
              }
              case 'remove':
                await (await devices[cmd.device]!.todos.findOne(cmd.doc).exec())?.remove();
                break;
              case 'scope':
                scopes[cmd.device] = cmd.scope;
                devices[cmd.device]!.sync.setScope('todos', cmd.scope);
                break;
              case 'offline':
                devices[cmd.device]!.sync.disable();
                break;
              case 'online':
                devices[cmd.device]!.sync.enable();
                break;
              case 'restart': {
                const closing = devices[cmd.device]!;
                await closing.close();
                devices[cmd.device] = await open(closing.name, cmd.device);
                break;
              }
              case 'compact':
                await storage.clearEventsBefore(await storage.getLatestSequence());
                break;
              case 'pause':
                await sleep(cmd.ms);
                break;
            }
          }
          for (const c of devices) c.sync.enable();
          let mismatch = '';
          await waitFor(async () => {
            // A run may fail here (a device restarting its connection): the next look syncs again.
            for (const c of devices) await outcome(c.sync.syncNow());
            const busy = devices.findIndex((c) => c.sync.getStatus().pendingEvents > 0 || c.sync.getConflicts().length > 0);
            if (busy >= 0) {
              mismatch = `device ${busy}: ${JSON.stringify(devices[busy]!.sync.getStatus())}`;
              return false;
            }
            const truth = await serverDocs(storage);
            for (let i = 0; i < DEVICES; i++) {
              const scope = parseScope(scopes[i] ?? null);
              const want = JSON.stringify(truth.filter((t) => matchesScope(scope, t as unknown as Record<string, unknown>)));
              const got = JSON.stringify(await contents(devices[i]!.todos));
              if (got !== want) {
                const history = (await storage.getEventsAfter(0)).map((e) => `${e.seq}:${e.documentId}:${e.op}:${(e.data as unknown as Todo).owner}/${(e.data as unknown as Todo).priority}:${e.clientId.slice(-4)}`).join(' ');
                mismatch = `device ${i} (scope ${JSON.stringify(scopes[i])}): holds ${got}, should hold ${want}; log ${history}`;
                return false;
              }
            }
            return true;
          }, 'every device to hold exactly its scope of the server state', 20_000).catch((error: Error) => {
            throw new Error(`${error.message}; ${mismatch}`);
          });
        } finally {
          await Promise.all(devices.map((c) => c.close().catch(() => undefined)));
          await s.stop();
        }
      }),
      { seed: SEED, numRuns: NUM_RUNS, endOnFailure: true },
    );
  }, 240_000);
});
