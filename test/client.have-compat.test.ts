/**
 * `have` carries [first, last] ranges under the same PROTOCOL_VERSION: it
 * only saves traffic. A server of an earlier release (sequences only) refuses
 * such a pull; the client asks again naming single sequences, and keeps to
 * that form, instead of failing every pull.
 */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from 'socket.io';
import { z } from 'zod';
import { afterEach, expect, it } from 'vitest';
import { sequenceSchema } from '../src/shared/protocol.js';
import { startClient, type TestClient } from './helpers.js';

let httpServer: HttpServer | undefined;
let io: Server | undefined;
const clients: TestClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await io?.close();
  httpServer = undefined;
});

/** The previous release's check of a pull's `have`, on a server that accepts every push. */
async function previousReleaseServer(): Promise<string> {
  let seq = 0;
  httpServer = createServer();
  io = new Server(httpServer);
  io.on('connection', (socket) => {
    socket.on('sync:subscribe', (_m, ack) => ack({ ok: true, collections: ['todos'] }));
    socket.on('sync:push', (m: { events: { id: string }[] }, ack) => ack({ ok: true, results: m.events.map((e) => ({ id: e.id, status: 'accepted', seq: ++seq })) }));
    socket.on('sync:pull', (m: { checkpoint: number; have?: unknown }, ack) => {
      if (!z.array(sequenceSchema).max(5000).optional().safeParse(m.have).success) {
        return ack({ ok: false, error: { code: 'INVALID_MESSAGE', message: 'pull message: have: expected number' } });
      }
      ack({ ok: true, events: [], checkpoint: seq, hasMore: false });
    });
  });
  await new Promise<void>((resolve) => httpServer!.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
}

it('a client still pulls from a server that takes single sequences only in have, after pushing two documents', async () => {
  const url = await previousReleaseServer();
  const client = await startClient(url, { autoSync: false, retry: { maxRetries: 0, retryDelay: 50, useExponentialBackoff: false } });
  clients.push(client);
  await client.todos.bulkInsert([{ id: 'a', title: 'a', done: false }, { id: 'b', title: 'b', done: false }]);
  await new Promise((r) => setTimeout(r, 100));
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
  expect(await client.sync.syncNow()).toMatchObject({ success: true });
});
