import { afterEach, describe, expect, it } from 'vitest';
import { contents, sleep, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer;
const clients: TestClient[] = [];

async function client(options: Parameters<typeof startClient>[1] = {}) {
  const c = await startClient(server.url, options);
  clients.push(c);
  return c;
}

async function converged(...list: TestClient[]) {
  await waitFor(async () => {
    const all = await Promise.all(list.map((c) => contents(c.todos)));
    return all.every((docs) => JSON.stringify(docs) === JSON.stringify(all[0]));
  }, 'clients to converge');
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await server?.stop();
});

describe('live sync between clients', () => {
  it('inserts, updates and deletes reach the other client in both directions', async () => {
    server = await startServer();
    const a = await client();
    const b = await client();
    await waitFor(() => a.sync.getStatus().connected && b.sync.getStatus().connected, 'both connected');

    await a.todos.insert({ id: 't1', title: 'from a', done: false });
    await waitFor(async () => (await b.todos.findOne('t1').exec()) !== null, 'b to see t1');

    await (await b.todos.findOne('t1').exec())!.patch({ done: true, title: 'edited by b' });
    await waitFor(async () => (await a.todos.findOne('t1').exec())?.done === true, 'a to see the edit');

    await b.todos.insert({ id: 't2', title: 'from b', done: false });
    await (await a.todos.findOne('t1').exec())!.remove();
    await waitFor(async () => (await b.todos.findOne('t1').exec()) === null, 'b to see the delete');
    await converged(a, b);
    expect((await contents(a.todos)).map((t) => t.id)).toEqual(['t2']);
  });

  it('stores exactly one event per write: applying remote changes never echoes', async () => {
    server = await startServer();
    const a = await client();
    const b = await client();
    await waitFor(() => a.sync.getStatus().connected && b.sync.getStatus().connected, 'both connected');
    await a.todos.bulkInsert([1, 2, 3].map((i) => ({ id: `e${i}`, title: `t${i}`, done: false })));
    await waitFor(async () => (await b.todos.count().exec()) === 3, 'b to have 3');
    await (await b.todos.findOne('e1').exec())!.patch({ done: true });
    await waitFor(async () => (await a.todos.findOne('e1').exec())?.done === true, 'a to see it');
    await a.sync.syncNow();
    await b.sync.syncNow();
    await a.sync.syncNow();
    expect(await server.server.getStorage().countEvents()).toBe(4);
    expect(a.sync.getStatus().pendingEvents).toBe(0);
    expect(b.sync.getStatus().pendingEvents).toBe(0);
  });

  it('a pull does not send back what this client pushed and saw acknowledged', async () => {
    server = await startServer();
    const a = await client();
    await a.sync.syncNow();
    let pulled = 0;
    server.server.events.on('pull', ({ events }) => (pulled += events));
    await a.todos.bulkInsert(Array.from({ length: 700 }, (_, i) => ({ id: `own${i}`, title: `${i}`, done: false })));
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 700, 'the push');
    await a.sync.syncNow();
    expect(pulled).toBe(0);
    // Another client's write in between is still pulled.
    const b = await client();
    await b.todos.insert({ id: 'theirs', title: 'from b', done: false });
    await waitFor(async () => (await a.todos.findOne('theirs').exec()) !== null, 'a to get b\'s write');
    expect(await a.todos.count().exec()).toBe(701);
  });

  it('events that arrived live are not sent again by the pull that follows them', async () => {
    server = await startServer();
    const a = await client();
    const b = await client();
    await waitFor(() => a.sync.getStatus().connected && b.sync.getStatus().connected, 'both connected');
    await b.sync.syncNow();
    let pulled = 0;
    server.server.events.on('pull', ({ events }) => (pulled += events));
    await a.todos.bulkInsert(Array.from({ length: 200 }, (_, i) => ({ id: `burst${i}`, title: `${i}`, done: false })));
    await waitFor(async () => (await b.todos.count().exec()) === 200, 'b to receive the burst live');
    await b.sync.syncNow(); // moves b's checkpoint past the burst
    expect(pulled).toBe(0);
    // And b's checkpoint did move: a reconnect asks for nothing before the burst.
    // (First the pull that follows live events settles: one still on its way when 'after' is stored would
    // rightly carry it, before the live message does.)
    await sleep(300);
    const before = pulled;
    await a.todos.insert({ id: 'after', title: 'later', done: false });
    await waitFor(async () => (await b.todos.findOne('after').exec()) !== null, 'b to receive a later write');
    await b.sync.syncNow();
    expect(pulled - before).toBe(0);
  });
});
