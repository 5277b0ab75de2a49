import { describe, expect, it } from 'vitest';
import type { ConflictResolution } from '../src/client/index.js';
import { MemorySyncStorage } from '../src/server/index.js';
import { closeAfterEach, contents, sleep, startClient, startServer, waitFor, type TestClient, type TestServer, type Todo } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

const base: Todo = { id: 'd', title: 'base', done: false, priority: 1 };
type Edit = (client: TestClient) => Promise<unknown>;
const patch = (fields: Partial<Todo>): Edit => async (c) => (await c.todos.findOne('d').exec())!.patch(fields);
const remove: Edit = async (c) => (await c.todos.findOne('d').exec())!.remove();
const serverStorage = () => server!.server.getStorage();
const settled = (c: TestClient) => waitFor(() => c.sync.getStatus().pendingEvents === 0 && c.sync.getStatus().connected, `${c.name} to settle`);

async function pair(conflictResolution: ConflictResolution, seed: Todo | null = base) {
  server = await startServer();
  const a = await startClient(server.url, { conflictResolution });
  const b = await startClient(server.url, { conflictResolution });
  clients.push(a, b);
  if (seed) {
    await a.todos.insert(seed);
    await waitFor(async () => (await b.todos.findOne(seed.id).exec()) !== null, 'b to get the seed');
    await settled(a);
  }
  return { a, b };
}

/**
 * Both clients edit offline, `first` edits earlier; `first` comes back first,
 * so `second`'s push is the one that conflicts.
 */
async function concurrently(a: TestClient, b: TestClient, editA: Edit, editB: Edit, order: 'a-first' | 'b-first' = 'a-first') {
  a.sync.disable();
  b.sync.disable();
  const [first, second, editFirst, editSecond] = order === 'a-first' ? [a, b, editA, editB] : [b, a, editB, editA];
  await editFirst(first);
  await sleep(5);
  await editSecond(second);
  await waitFor(() => a.sync.getStatus().pendingEvents > 0 && b.sync.getStatus().pendingEvents > 0, 'both edits logged');
  first.sync.enable();
  await settled(first);
  second.sync.enable();
  await settled(second);
  await first.sync.syncNow();
  await second.sync.syncNow();
  await waitFor(async () => JSON.stringify(await contents(a.todos)) === JSON.stringify(await contents(b.todos)), 'convergence');
  const serverHead = (await server!.server.getStorage().getHeads('todos', ['d']))[0];
  return { docs: await contents(a.todos), serverHead };
}

describe('last-write-wins', () => {
  it('a write undone offline is still a write: an insert deleted again beats an older concurrent insert', async () => {
    const { a, b } = await pair('last-write-wins');
    await remove(a);
    await waitFor(async () => (await b.todos.findOne('d').exec()) === null, 'b to see the delete');
    await settled(a);
    // b brings the document back; a, offline and unaware, creates it again and deletes it later.
    const { docs, serverHead } = await concurrently(
      a,
      b,
      async (c) => { await c.todos.insert({ ...base, title: 'a, undone' }); await sleep(5); await remove(c); },
      async (c) => c.todos.insert({ ...base, title: 'b' }),
      'b-first',
    );
    expect(serverHead).toMatchObject({ deleted: true });
    expect(docs).toEqual([]);
  });

  it('an edit undone offline is still a write: it beats an older concurrent edit', async () => {
    const { a, b } = await pair('last-write-wins');
    const { docs } = await concurrently(
      a,
      b,
      async (c) => { await patch({ title: 'a' })(c); await sleep(5); await patch({ title: 'base' })(c); },
      patch({ title: 'b' }),
      'b-first',
    );
    expect(docs).toEqual([base]);
  });

  it('the later write wins on both clients, whichever reaches the server first', async () => {
    const { a, b } = await pair('last-write-wins');
    const { docs } = await concurrently(a, b, patch({ title: 'a' }), patch({ title: 'b' }));
    expect(docs).toEqual([{ ...base, title: 'b' }]);
    expect(server!.server.getStats().conflicts).toBeGreaterThan(0);
  });
  it('an earlier local write loses to a later remote one', async () => {
    const { a, b } = await pair('last-write-wins');
    // b writes first but reaches the server last: its push conflicts and it keeps a's later write.
    const { docs } = await concurrently(a, b, patch({ title: 'a' }), patch({ title: 'b' }), 'b-first');
    expect(docs).toEqual([{ ...base, title: 'a' }]);
  });
  it('delete against a later update: the update wins and the document lives', async () => {
    const { a, b } = await pair('last-write-wins');
    const { docs } = await concurrently(a, b, remove, patch({ title: 'updated later' }));
    expect(docs).toEqual([{ ...base, title: 'updated later' }]);
  });
  it('update against a later delete: the document is deleted everywhere', async () => {
    const { a, b } = await pair('last-write-wins');
    const { docs, serverHead } = await concurrently(a, b, patch({ title: 'updated' }), remove);
    expect(docs).toEqual([]);
    expect(serverHead!.deleted).toBe(true);
  });
  it('a write the server already holds the same state of still keeps its later clock there: an older write arriving after it loses', async () => {
    const { a, b } = await pair('last-write-wins');
    const c = await startClient(server!.url, { conflictResolution: 'last-write-wins' });
    clients.push(c);
    await waitFor(async () => (await c.todos.findOne('d').exec()) !== null, 'c to get the seed');
    b.sync.disable();
    c.sync.disable();
    // a deletes (online), then b edits and c deletes, both offline, b earlier than c.
    await remove(a);
    await settled(a);
    await sleep(5);
    await patch({ title: 'b, earlier than c' })(b);
    await sleep(5);
    await remove(c);
    await waitFor(() => b.sync.getStatus().pendingEvents > 0 && c.sync.getStatus().pendingEvents > 0, 'both offline writes logged');
    // c comes back first: its delete meets a's, the same state. b's edit comes back last.
    c.sync.enable();
    await settled(c);
    b.sync.enable();
    await settled(b);
    for (const client of [a, b, c]) await client.sync.syncNow();
    const [head] = await serverStorage().getHeads('todos', ['d']);
    expect(head).toMatchObject({ deleted: true });
    for (const client of [a, b, c]) expect(await contents(client.todos), client.name).toEqual([]);
  });

  it('two inserts of the same primary key: the later insert wins', async () => {
    const { a, b } = await pair('last-write-wins', null);
    const { docs } = await concurrently(
      a, b,
      (c) => c.todos.insert({ id: 'd', title: 'inserted by a', done: false }),
      (c) => c.todos.insert({ id: 'd', title: 'inserted by b', done: true }),
    );
    expect(docs).toEqual([{ id: 'd', title: 'inserted by b', done: true }]);
  });
});

describe('server-wins, client-wins, merge', () => {
  for (const strategy of ['server-wins', 'manual'] as const) {
    it(`${strategy}: a change the server already holds the same state of is dropped, not pushed again over a later write made on it`, async () => {
      const { a, b } = await pair(strategy);
      const c = await startClient(server!.url, { conflictResolution: strategy });
      clients.push(c);
      await waitFor(async () => (await c.todos.findOne('d').exec()) !== null, 'c to get the seed');
      b.sync.disable();
      // a deletes online and c sees it; b deletes too, offline and later; c then creates the document again, offline.
      await remove(a);
      await settled(a);
      await waitFor(async () => (await c.todos.findOne('d').exec()) === null, 'c to see the delete');
      c.sync.disable();
      await sleep(5);
      await remove(b);
      await sleep(5);
      await c.todos.insert({ ...base, title: 'created again by c' });
      await waitFor(() => b.sync.getStatus().pendingEvents > 0 && c.sync.getStatus().pendingEvents > 0, 'both offline writes logged');
      // b's delete meets a's: the same state, nothing to push. c's write, made on a's delete, then meets no conflict.
      b.sync.enable();
      await settled(b);
      c.sync.enable();
      await settled(c);
      for (const client of [a, b, c]) await client.sync.syncNow();
      const [head] = await serverStorage().getHeads('todos', ['d']);
      expect(head).toMatchObject({ deleted: false, data: { title: 'created again by c' } });
      expect(c.sync.getConflicts()).toEqual([]);
      for (const client of [a, b, c]) expect((await contents(client.todos)).map((todo) => todo.title), client.name).toEqual(['created again by c']);
    });
  }

  it('server-wins keeps what reached the server first', async () => {
    const { a, b } = await pair('server-wins');
    const { docs } = await concurrently(a, b, patch({ title: 'a' }), patch({ title: 'b' }));
    expect(docs).toEqual([{ ...base, title: 'a' }]);
  });
  it('client-wins keeps the conflicting client\'s write', async () => {
    const { a, b } = await pair('client-wins');
    const { docs } = await concurrently(a, b, patch({ title: 'b-first' }), patch({ title: 'a-later' }), 'b-first');
    expect(docs).toEqual([{ ...base, title: 'b-first' }]);
  });
  it('merge keeps both sides\' fields, and the later clock where both changed one', async () => {
    const { a, b } = await pair('merge');
    const { docs } = await concurrently(a, b, patch({ title: 'title from a', priority: 5 }), patch({ done: true, priority: 9 }));
    expect(docs).toEqual([{ ...base, title: 'title from a', done: true, priority: 9 }]);
  });
  it('a per-collection choice is honoured', async () => {
    const { a, b } = await pair({ todos: 'server-wins' } as never);
    const { docs } = await concurrently(a, b, patch({ title: 'a' }), patch({ title: 'b' }));
    expect(docs).toEqual([{ ...base, title: 'a' }]);
  });
});

/** Both edit the title offline; a comes back first, so b, under `manual`, keeps a conflict. */
async function keepConflict(a: TestClient, b: TestClient) {
  a.sync.disable();
  b.sync.disable();
  await patch({ title: 'from a' })(a);
  await patch({ title: 'from b' })(b);
  await waitFor(() => a.sync.getStatus().pendingEvents > 0 && b.sync.getStatus().pendingEvents > 0, 'both logged');
  a.sync.enable();
  await settled(a);
  b.sync.enable();
  await waitFor(() => b.sync.getConflicts().length === 1, 'b to keep a conflict');
}

describe('manual and custom', () => {
  it('manual keeps the conflict, the local document as the user left it, across a restart, until resolved', async () => {
    const { a, b } = await pair('manual');
    await keepConflict(a, b);
    expect((await b.todos.findOne('d').exec())!.title).toBe('from b');
    const [conflict] = b.sync.getConflicts();
    expect(conflict).toMatchObject({ collection: 'todos', documentId: 'd', local: { data: { title: 'from b' } }, remote: { data: { title: 'from a' } }, base: { data: { title: 'base' } } });
    expect(b.sync.getStatus().conflicts).toBe(1);

    // The conflict survives a restart.
    const name = b.name;
    await b.close();
    clients.splice(clients.indexOf(b), 1);
    const b2 = await startClient(server!.url, { name, conflictResolution: 'manual' });
    clients.push(b2);
    expect(b2.sync.getConflicts()).toHaveLength(1);

    await b2.sync.resolveConflict(conflict!.id, { data: { ...base, title: 'merged by hand' } });
    await b2.sync.syncNow();
    await a.sync.syncNow();
    expect(await contents(a.todos)).toEqual([{ ...base, title: 'merged by hand' }]);
    expect(await contents(b2.todos)).toEqual([{ ...base, title: 'merged by hand' }]);
    expect(b2.sync.getConflicts()).toEqual([]);
  });

  it('keep-remote and keep-local settle a manual conflict', async () => {
    const { a, b } = await pair('manual');
    await keepConflict(a, b);
    await b.sync.resolveConflict(b.sync.getConflicts()[0]!.id, 'keep-local');
    await b.sync.syncNow();
    await a.sync.syncNow();
    expect((await contents(a.todos))[0]!.title).toBe('from b');
  });

  it('a custom function decides, sees both sides and the base; a throw becomes a manual conflict and an error', async () => {
    const seen: unknown[] = [];
    const { a, b } = await pair((conflict) => {
      seen.push(conflict);
      return { ...conflict.remote!.data, title: `${conflict.remote!.data.title} + ${conflict.local.data.title}` };
    });
    const { docs } = await concurrently(a, b, patch({ title: 'a' }), patch({ title: 'b' }));
    expect(docs).toEqual([{ ...base, title: 'a + b' }]);
    expect(seen[0]).toMatchObject({ collection: 'todos', documentId: 'd', base: { data: { title: 'base' } } });

    const failing = await pair(() => { throw new Error('cannot decide'); });
    failing.a.sync.disable();
    failing.b.sync.disable();
    await patch({ title: 'x' })(failing.a);
    await patch({ title: 'y' })(failing.b);
    await waitFor(() => failing.a.sync.getStatus().pendingEvents > 0 && failing.b.sync.getStatus().pendingEvents > 0, 'logged');
    failing.a.sync.enable();
    await settled(failing.a);
    failing.b.sync.enable();
    await waitFor(() => failing.b.sync.getConflicts().length === 1, 'manual conflict');
    expect(failing.b.sync.getConflicts()[0]!.reason).toContain('cannot decide');
    expect(failing.b.sync.getStatus().error).toMatchObject({ code: 'CONFLICT_RESOLVER_FAILED' });
  });
});

describe('a custom function that leaves a conflict to the user', () => {
  it("'manual' keeps the conflict as the manual strategy does, with no error; other conflicts it settles", async () => {
    // Titles edited on both sides go to the user; anything else merges as the function says.
    const { a, b } = await pair(({ local, remote, base: agreed }) =>
      local.data.title !== agreed?.data.title && remote!.data.title !== agreed?.data.title ? 'manual' : { ...remote!.data, done: local.data.done },
    );
    await keepConflict(a, b);
    const [conflict] = b.sync.getConflicts();
    expect(conflict).toMatchObject({ documentId: 'd', local: { data: { title: 'from b' } }, remote: { data: { title: 'from a' } } });
    expect(conflict!.reason).toBeUndefined();
    expect(b.sync.getStatus().error).toBeNull();
    expect((await b.todos.findOne('d').exec())!.title).toBe('from b');

    await b.sync.resolveConflict(conflict!.id, 'keep-remote');
    await b.sync.syncNow();
    expect(b.sync.getConflicts()).toEqual([]);
    // A tick on one side and a rename on the other: settled by the function, no conflict kept.
    const { docs } = await concurrently(a, b, patch({ title: 'renamed' }), patch({ done: true }));
    expect(docs).toEqual([{ ...base, title: 'renamed', done: true }]);
    expect(b.sync.getConflicts()).toEqual([]);
  });
});

describe('no silent overwrite (invariant 6)', () => {
  it('a remote change never overwrites a local change the server has not taken, live or pulled', async () => {
    // a's push is held inside the server, so a's change stays unacknowledged while b's arrives.
    const storage = new MemorySyncStorage();
    const save = storage.saveEvents.bind(storage);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    storage.saveEvents = async (events) => {
      if (events.some((event) => event.data.title === 'a, unpushed')) await held;
      return save(events);
    };
    server = await startServer({ storage });
    const a = await startClient(server.url, { conflictResolution: 'manual' });
    const b = await startClient(server.url, { conflictResolution: 'manual' });
    clients.push(a, b);
    await a.todos.insert(base);
    await waitFor(async () => (await b.todos.findOne('d').exec()) !== null, 'b to get the seed');
    await settled(a);

    await patch({ title: 'a, unpushed' })(a);
    await waitFor(() => a.sync.getStatus().pendingEvents === 1, 'a to log its change');
    await patch({ title: 'b' })(b);
    await waitFor(async () => (await storage.getHeads('todos', ['d']))[0]?.data.title === 'b', 'the server to take b');
    await sleep(300); // b's change reaches a live, and a's follow-up pull is due
    expect((await a.todos.findOne('d').exec())!.title).toBe('a, unpushed');

    release();
    await waitFor(() => a.sync.getConflicts().length === 1, 'a to keep the conflict');
    expect((await a.todos.findOne('d').exec())!.title).toBe('a, unpushed');
    expect(a.sync.getConflicts()[0]).toMatchObject({ local: { data: { title: 'a, unpushed' } }, remote: { data: { title: 'b' } } });

    // A further remote change, now reaching a by pull, does not overwrite it either.
    await patch({ title: 'b again' })(b);
    await waitFor(async () => (await storage.getHeads('todos', ['d']))[0]?.data.title === 'b again', 'the server to take b again');
    await a.sync.syncNow();
    expect((await a.todos.findOne('d').exec())!.title).toBe('a, unpushed');
    expect(a.sync.getConflicts()[0]).toMatchObject({ remote: { data: { title: 'b again' } } });
  });
});

describe('a document created again after a remote delete', () => {
  for (const strategy of ['server-wins', 'manual'] as const) {
    it(`is not a conflict: the new insert is based on the tombstone (${strategy}), also after RxDB purged it`, async () => {
      const { a, b } = await pair(strategy);
      for (const [round, purge] of [[1, false], [2, true]] as const) {
        await remove(a);
        await settled(a);
        await waitFor(async () => (await b.todos.findOne('d').exec()) === null, 'b to see the delete');
        await settled(b);
        if (purge) await b.todos.storageInstance.cleanup(0); // RxDB's cleanup drops the tombstone
        await b.todos.insert({ ...base, title: `again ${round}` });
        await waitFor(async () => (await serverStorage().getHeads('todos', ['d']))[0]?.data.title === `again ${round}`, 'the server to take the new insert');
        await waitFor(async () => (await a.todos.findOne('d').exec())?.title === `again ${round}`, 'a to get it');
        expect(b.sync.getConflicts()).toEqual([]);
        expect((await b.todos.findOne('d').exec())?.title).toBe(`again ${round}`);
      }
    });
  }
});
