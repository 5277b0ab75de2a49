/**
 * Field connectivity: a link that drops without closing is noticed within
 * the heartbeat timeout, the client is back soon after the link returns,
 * and the browser's own signals (offline, online) act at once.
 */
import { Socket as NetSocket, createServer, type Server as NetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startClient, startServer, waitFor, type TestClient, type TestServer } from './helpers.js';

let server: TestServer | undefined;
let proxy: LinkProxy | undefined;
const clients: TestClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await proxy?.close();
  proxy = undefined;
  await server?.stop();
  server = undefined;
});

/**
 * A TCP hop between client and server that can go silent the way a radio
 * link does: `cut()` stops carrying bytes both ways without closing
 * anything, and refuses nothing (new connections hang); `restore()` drops
 * the dead connections, as the peers' TCP would in the end, and carries
 * new ones again.
 */
interface LinkProxy {
  url: string;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

async function linkProxy(target: number): Promise<LinkProxy> {
  let up = true;
  const pairs = new Set<[NetSocket, NetSocket]>();
  const net: NetServer = createServer((inbound) => {
    const outbound = new NetSocket();
    const pair: [NetSocket, NetSocket] = [inbound, outbound];
    pairs.add(pair);
    const end = () => {
      inbound.destroy();
      outbound.destroy();
      pairs.delete(pair);
    };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
    outbound.connect(target, '127.0.0.1');
    inbound.on('data', (chunk) => up && outbound.write(chunk));
    outbound.on('data', (chunk) => up && inbound.write(chunk));
  });
  await new Promise<void>((resolve) => net.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(net.address() as AddressInfo).port}`,
    cut: () => {
      up = false;
    },
    restore: () => {
      for (const [inbound, outbound] of pairs) {
        inbound.destroy();
        outbound.destroy();
      }
      pairs.clear();
      up = true;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const [inbound, outbound] of pairs) {
          inbound.destroy();
          outbound.destroy();
        }
        net.close(() => resolve());
      }),
  };
}

/**
 * A client behind the proxy with `options`: connected, its link cut, a
 * write made; it must take the link for dead, be back once it returns, and
 * the write must arrive.
 */
async function cutAndRestore(options: Parameters<typeof startClient>[1]): Promise<void> {
  server = await startServer({ heartbeatInterval: 200 });
  proxy = await linkProxy(server.port);
  const client = await startClient(proxy.url, { heartbeatTimeout: 1000, retry: { maxRetries: 5, retryDelay: 100, maxDelay: 300, useExponentialBackoff: true }, ...options });
  clients.push(client);
  await waitFor(() => client.sync.getStatus().connected, 'the client to connect');

  proxy.cut();
  await client.todos.insert({ id: 'in-the-tunnel', title: 'written while the link is dead', done: false });
  await waitFor(() => !client.sync.getStatus().connected, 'the client to take the link for dead', 8000);

  proxy.restore();
  await waitFor(() => client.sync.getStatus().connected, 'the client to be back', 8000);
  await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the write made in the tunnel to arrive', 8000);
}

describe('a link that drops without closing', () => {
  it('is noticed within the heartbeat timeout, and the client is back once the link returns', async () => {
    // socket.io alone would notice after pingInterval + pingTimeout: 200 ms + 20 s here.
    await cutAndRestore({});
  });

  it('over long polling, gives up its unsent writes with the connection, and is back once the link returns', async () => {
    // The write is a push that cannot be sent: engine.io's close waited for it to drain, until its own ping timeout.
    await cutAndRestore({ useWebSockets: false, syncInterval: 100, requestTimeout: 1000 });
  });
});

describe("the browser's network events", () => {
  /** Stands in for `window` in Node: the client listens on globalThis when it can. */
  function fakeWindow() {
    const target = new EventTarget();
    const scope = globalThis as unknown as { addEventListener?: unknown; removeEventListener?: unknown };
    const saved = { add: scope.addEventListener, remove: scope.removeEventListener };
    scope.addEventListener = target.addEventListener.bind(target);
    scope.removeEventListener = target.removeEventListener.bind(target);
    return {
      fire: (type: string) => target.dispatchEvent(new Event(type)),
      restore: () => {
        scope.addEventListener = saved.add;
        scope.removeEventListener = saved.remove;
      },
    };
  }

  it('offline shows disconnected at once; online connects at once, whatever the backoff had left', async () => {
    const window = fakeWindow();
    try {
      server = await startServer();
      // A backoff of a minute: only the online event can bring the client back within the test.
      const client = await startClient(server.url, { retry: { maxRetries: 5, retryDelay: 60_000, maxDelay: 60_000, useExponentialBackoff: false } });
      clients.push(client);
      await waitFor(() => client.sync.getStatus().connected, 'the client to connect');
      window.fire('offline');
      await waitFor(() => !client.sync.getStatus().connected, 'the client to show the network gone', 2000);
      await client.todos.insert({ id: 'offline', title: 'written offline', done: false });
      window.fire('online');
      await waitFor(() => client.sync.getStatus().connected, 'the client to connect again at once', 5000);
      await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the offline write to arrive');
    } finally {
      window.restore();
    }
  });
});

describe('asking to sync while connecting', () => {
  let server: TestServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('sends one handshake: syncNow() during an attempt joins it, and nothing is replaced', async () => {
    server = await startServer();
    const dropped: string[] = [];
    server.server.events.on('client-dropped', ({ reason }) => dropped.push(reason));
    for (let i = 0; i < 20; i++) {
      const client = await startClient(server.url);
      // The plugin is connecting (its link opening, or open with the handshake in flight): ask again.
      await new Promise((resolve) => setTimeout(resolve, i % 5));
      try {
        await client.sync.syncNow();
        expect(client.sync.getStatus().connected).toBe(true);
      } finally {
        await client.close();
      }
    }
    expect(dropped).toEqual([]);
  });
});
