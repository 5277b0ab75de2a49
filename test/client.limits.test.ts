import { afterEach, describe, expect, it } from 'vitest';
import { startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await server?.stop();
  server = undefined;
});

describe('a client meeting server limits', () => {
  it('pushes in smaller batches when the server takes fewer events per push', async () => {
    server = await startServer({ maxEventsPerPush: 5 });
    const client = await startClient(server.url, { autoSync: false });
    clients.push(client);
    await client.todos.bulkInsert(Array.from({ length: 23 }, (_, i) => ({ id: `b${i}`, title: `t${i}`, done: false })));
    await waitFor(() => client.sync.getStatus().pendingEvents === 23, 'all logged');
    const result = await client.sync.syncNow();
    expect(result).toMatchObject({ success: true, syncedEvents: 23 });
    expect(await server.server.getStorage().countEvents()).toBe(23);
  });

  it('halves batches that are too large in bytes, and sets aside one document that can never fit', async () => {
    server = await startServer({ maxPayloadBytes: 4000 });
    // Batches up to 7000 bytes: over the server's limit, under the size at which socket.io itself drops a message.
    const client = await startClient(server.url, { autoSync: false, maxBatchBytes: 7000 });
    clients.push(client);
    await client.todos.bulkInsert(Array.from({ length: 30 }, (_, i) => ({ id: `s${i}`, title: 'x'.repeat(200), done: false })));
    await client.todos.insert({ id: 'huge', title: 'y'.repeat(5000), done: false });
    await waitFor(() => client.sync.getStatus().pendingEvents === 31, 'all logged');
    const result = await client.sync.syncNow();
    expect(result.success).toBe(true);
    expect(await server.server.getStorage().countEvents()).toBe(30);
    expect(client.sync.getRejectedEvents()).toMatchObject([{ documentId: 'huge', error: { code: 'PAYLOAD_TOO_LARGE' } }]);
    expect(client.sync.getStatus()).toMatchObject({ pendingEvents: 0, rejectedEvents: 1, error: { code: 'PAYLOAD_TOO_LARGE' } });
  });
});
