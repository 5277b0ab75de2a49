import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { MemorySyncStorage } from '../src/server/index.js';
import { Retention } from '../src/server/retention.js';
import { closeAfterEach, contents, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

describe('compaction', () => {
  it('a client whose checkpoint predates compacted history catches up exactly, deletes included; a new client costs one event per document', async () => {
    server = await startServer();
    const writer = await startClient(server.url);
    const lagging = await startClient(server.url);
    clients.push(writer, lagging);
    await writer.todos.bulkInsert(Array.from({ length: 20 }, (_, i) => ({ id: `d${i}`, title: 'v0', done: false })));
    await waitFor(async () => (await lagging.todos.count().exec()) === 20, 'the lagging client to start in sync');
    lagging.sync.disable();

    for (let round = 1; round <= 10; round++) {
      for (let i = 0; i < 20; i++) await (await writer.todos.findOne(`d${i}`).exec())!.patch({ title: `v${round}` });
      await writer.sync.syncNow();
    }
    for (let i = 0; i < 5; i++) await (await writer.todos.findOne(`d${i}`).exec())!.remove();
    await writer.sync.syncNow();
    const storage = server.server.getStorage();
    expect(await storage.countEvents()).toBe(20 + 200 + 5);

    expect(await server.server.compact()).toBe(20 + 200 + 5 - 20);
    expect(await storage.countEvents()).toBe(20);

    lagging.sync.enable();
    await waitFor(async () => JSON.stringify(await contents(lagging.todos)) === JSON.stringify(await contents(writer.todos)), 'the lagging client to catch up');
    expect((await contents(lagging.todos)).map((t) => t.id).sort()).toEqual(Array.from({ length: 15 }, (_, i) => `d${i + 5}`).sort());

    let pulled = 0;
    server.server.events.on('pull', ({ events }) => (pulled += events));
    const fresh = await startClient(server.url);
    clients.push(fresh);
    await fresh.sync.syncNow();
    expect(await contents(fresh.todos)).toEqual(await contents(writer.todos));
    expect(pulled).toBe(20);
  });

  it('retention keeps the newest events by count and by age, and never removes a head', async () => {
    const storage = new MemorySyncStorage();
    let now = 1_000_000;
    const logger = pino({ enabled: false });
    const hlc = (n: number) => `${String(1_700_000_000_000 + n).padStart(15, '0')}-000000-c`;
    let base: string | null = null;
    const write = async (n: number) => {
      const id = `event-${String(n).padStart(4, '0')}`;
      await storage.saveEvents([{ id, collection: 'todos', documentId: 'only', op: base ? 'update' : 'insert', data: { id: 'only', n }, baseEventId: base, hlc: hlc(n), clientId: 'c' }]);
      base = id;
    };
    for (let n = 1; n <= 10; n++) await write(n);
    expect(await new Retention(storage, { maxEvents: 4, intervalMs: 1000 }, logger).run()).toBe(6);
    expect(await storage.countEvents()).toBe(4);

    const byAge = new Retention(storage, { maxAgeMs: 5000, intervalMs: 1000 }, logger, undefined, () => now);
    expect(await byAge.run()).toBe(0); // nothing is old enough yet
    for (let n = 11; n <= 15; n++) await write(n);
    now += 6000;
    expect(await byAge.run()).toBe(4); // events 7..10 were there 6 s ago; 11..15 are newer
    for (let n = 16; n <= 20; n++) await write(n);
    now += 6000;
    await byAge.run();
    expect((await storage.getEventsAfter(0)).map((e) => e.seq)).toEqual([16, 17, 18, 19, 20]);
    expect(await storage.getChangesAfter(0)).toHaveLength(1);
  });
});
