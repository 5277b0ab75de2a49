/**
 * Every stored document can be pulled (invariant 11): pull pages are bounded
 * in bytes (maxPullBytes) as well as in count, so that a page of large
 * documents is never one giant string to encode; a document larger than a
 * page comes alone, so a reader always moves on; and a pushed document that
 * no page could carry is refused, so nothing is stored that cannot be pulled.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MemorySyncStorage } from '../src/server/storage/index.js';
import { formatHlc } from '../src/shared/hlc.js';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type PullPage, type SyncEvent } from '../src/shared/protocol/index.js';
import { closeAfterEach, rawEvent, rawSocket, request, startClient, startServer, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];
closeAfterEach(clients, () => server);
afterEach(() => {
  server = undefined;
});

const MiB = 1024 * 1024;

/** A todo of about `bytes` bytes of JSON, written by `node`. */
function largeTodo(documentId: string, bytes: number, node = 'writer'): SyncEvent {
  return rawEvent({
    documentId,
    data: { id: documentId, title: `${documentId} ${'x'.repeat(bytes)}`, done: false },
    hlc: formatHlc({ millis: Date.now() - 60_000, counter: 0, node }),
  });
}

/** Pushes each event alone (a large document fills a push), protocol 4; the outcomes. */
async function pushEach(url: string, events: readonly SyncEvent[]): Promise<unknown[]> {
  const socket = await rawSocket(url, { protocolVersion: PROTOCOL_VERSION, clientId: 'writer' });
  try {
    const outcomes: unknown[] = [];
    for (const event of events) {
      const reply = await request(socket, MESSAGE.push, toPushRows([event], 'writer'), 20_000);
      expect(reply.ok, JSON.stringify(reply.error)).toBe(true);
      outcomes.push(reply.results[0]);
    }
    return outcomes;
  } finally {
    socket.close();
  }
}

describe('pull pages bounded in bytes', () => {
  it('brings twenty documents of 3 MB to a fresh client, one a page', async () => {
    server = await startServer();
    const count = 20;
    const outcomes = await pushEach(server.url, Array.from({ length: count }, (_, i) => largeTodo(`big-${String(i).padStart(2, '0')}`, 3 * MiB)));
    expect(outcomes.every((outcome) => typeof outcome === 'number')).toBe(true);

    const pages: number[] = [];
    server.server.events.on('pull', ({ events }: { events: number }) => pages.push(events));
    const rssBefore = process.memoryUsage().rss;
    const reader = await startClient(server.url, { autoSync: false });
    clients.push(reader);
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    expect(await reader.todos.count().exec()).toBe(count);
    const titles = (await reader.todos.find().exec()).map((doc) => doc.title);
    expect(titles.every((title) => title.length === 3 * MiB + 7)).toBe(true);
    // Two documents of 3 MB are more than the default 4 MiB a page: each came alone.
    expect(pages.filter((events) => events > 0)).toEqual(Array.from({ length: count }, () => 1));
    // What the pull held at once was about a page, not the twenty documents (60 MB) together.
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(400 * MiB);
  }, 60_000);

  it('says a page cut by bytes has more after it, though it holds fewer events than the limit', async () => {
    server = await startServer({ maxPullBytes: 64 * 1024 });
    await pushEach(server.url, ['a', 'b', 'c', 'd', 'e'].map((id) => largeTodo(id, 30 * 1024)));
    const reader = await rawSocket(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'reader' });
    try {
      const seen: string[] = [];
      const sizes: number[] = [];
      let checkpoint = 0;
      for (;;) {
        const page = (await request(reader, MESSAGE.pull, { checkpoint, collections: ['todos'], limit: 1000 })) as PullPage & { ok: true };
        seen.push(...page.events.map((row) => row[2]));
        sizes.push(page.events.length);
        checkpoint = page.checkpoint;
        if (!page.hasMore) break;
      }
      expect(seen).toEqual(['a', 'b', 'c', 'd', 'e']);
      // Two documents of 30 KB fit in 64 KB, a third does not.
      expect(sizes).toEqual([2, 2, 1]);
    } finally {
      reader.close();
    }
  });

  it('sends a document larger than a page alone, so a reader always moves on (documents stored under a larger bound)', async () => {
    const storage = new MemorySyncStorage();
    server = await startServer({ storage });
    await pushEach(server.url, [largeTodo('small-1', 100), largeTodo('small-2', 100), largeTodo('large', 200 * 1024), largeTodo('larger', 300 * 1024), largeTodo('small-3', 100)]);
    await server.stop();
    // The same documents, served with a page smaller than two of them.
    server = await startServer({ storage, maxPullBytes: 100 * 1024 });
    const reader = await startClient(server.url, { autoSync: false });
    clients.push(reader);
    const pages: number[] = [];
    server.server.events.on('pull', ({ events }: { events: number }) => pages.push(events));
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    expect((await reader.todos.find().exec()).map((doc) => doc.id).sort()).toEqual(['large', 'larger', 'small-1', 'small-2', 'small-3']);
    // The two small ones together, then each large one alone, then the last.
    expect(pages.filter((events) => events > 0)).toEqual([2, 1, 1, 1]);
  });

  it('refuses a pushed document larger than a page (PAYLOAD_TOO_LARGE), alone: nothing is stored that cannot be pulled', async () => {
    server = await startServer({ maxPullBytes: 64 * 1024, maxPayloadBytes: 1 * MiB });
    const socket = await rawSocket(server.url, { protocolVersion: PROTOCOL_VERSION, clientId: 'writer' });
    try {
      const events = [largeTodo('fits', 60 * 1024), largeTodo('too-large', 70 * 1024), largeTodo('also-fits', 1000)];
      const reply = await request(socket, MESSAGE.push, toPushRows(events, 'writer'));
      expect(reply.results[0]).toBeTypeOf('number');
      expect(reply.results[1]).toMatchObject({ status: 'rejected', error: { code: 'PAYLOAD_TOO_LARGE', details: { limit: 64 * 1024 } } });
      expect(reply.results[1].error.message).toContain('maxPullBytes');
      expect(reply.results[2]).toBeTypeOf('number');
      expect(server.server.getStats()).toMatchObject({ accepted: 2, rejected: 1 });
    } finally {
      socket.close();
    }
    const reader = await startClient(server.url, { autoSync: false });
    clients.push(reader);
    expect(await reader.sync.syncNow()).toMatchObject({ success: true });
    expect((await reader.todos.find().exec()).map((doc) => doc.id).sort()).toEqual(['also-fits', 'fits']);
  });
});
