import { describe, expect, it } from 'vitest';
import type { ClientInfo } from '../src/server/index.js';
import { closeAfterEach, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

describe('watching clients', () => {
  it('onClientConnect, onClientDisconnect and getClients() show each client with its user, collections, checkpoint and last activity', async () => {
    const connected: ClientInfo[] = [];
    const disconnected: (ClientInfo & { reason: string })[] = [];
    server = await startServer({
      authenticate: (_socket, token) => (token ? { id: token } : null),
      onClientConnect: (client) => connected.push(client),
      onClientDisconnect: (client) => disconnected.push(client),
    });
    const writer = await startClient(server.url, { authToken: 'ana' });
    const reader = await startClient(server.url, { authToken: 'ben' });
    clients.push(writer, reader);
    await waitFor(() => connected.length === 2, 'both to connect');
    expect(connected.map((c) => (c.user as { id: string }).id).sort()).toEqual(['ana', 'ben']);

    await writer.todos.insert({ id: 't', title: 'seen', done: false });
    await writer.sync.syncNow();
    await reader.sync.syncNow();
    const listed = server.server.getClients();
    expect(listed).toHaveLength(2);
    const ben = listed.find((c) => (c.user as { id: string }).id === 'ben')!;
    expect(ben).toMatchObject({ collections: ['todos'], checkpoint: 1, clientId: expect.any(String), socketId: expect.any(String) });
    expect(ben.lastSeen).toBeGreaterThanOrEqual(ben.connectedAt);

    await reader.close();
    await waitFor(() => disconnected.length === 1, 'the reader to leave');
    expect(disconnected[0]).toMatchObject({ user: { id: 'ben' }, reason: expect.any(String) });
    expect(server.server.getClients().map((c) => (c.user as { id: string }).id)).toEqual(['ana']);
  });
});
