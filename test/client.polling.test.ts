import { describe, expect, it } from 'vitest';
import { closeAfterEach, startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

describe('useWebSockets: false', () => {
  it('has no live stream and syncs every syncInterval over long-polling', async () => {
    server = await startServer();
    const subscriptions: string[] = [];
    const transports: string[] = [];
    const liveSent: string[] = [];
    server.server.getIo().on('connection', (socket) => {
      transports.push(socket.conn.transport.name);
      socket.onAny((event) => event === 'sync:subscribe' && subscriptions.push(socket.data.clientId));
      socket.onAnyOutgoing((event) => event === 'sync:events' && liveSent.push(socket.data.clientId));
    });
    const polling = await startClient(server.url, { useWebSockets: false, syncInterval: 300 });
    const live = await startClient(server.url);
    clients.push(polling, live);
    await waitFor(() => polling.sync.getStatus().connected && live.sync.getStatus().connected, 'both connected');

    await live.todos.insert({ id: 'p1', title: 'from the live client', done: false });
    await waitFor(async () => (await polling.todos.findOne('p1').exec()) !== null, 'the next interval sync');

    await polling.todos.insert({ id: 'p2', title: 'from the polling client', done: false });
    await waitFor(async () => (await live.todos.findOne('p2').exec()) !== null, 'the polling client to push on its interval');
    expect(transports).toContain('polling');
    expect(subscriptions).toHaveLength(1); // only the live client subscribed
    expect(new Set(liveSent).size).toBeLessThanOrEqual(1); // and only it was sent live events
  });
});
