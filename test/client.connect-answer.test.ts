/**
 * A link that opens but whose socket.io CONNECT is never answered (a proxy
 * or a cluster primary that dropped the first frame): socket.io-client
 * would wait on it for good, connected at the transport and pinged. The
 * client gives up after requestTimeout and connects again.
 */
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { bareSyncIo, closeAfterEach, startClient, waitFor, type TestClient } from './helpers.js';

const clients: TestClient[] = [];
let http: HttpServer | undefined;
closeAfterEach(clients, () => undefined);
afterEach(async () => {
  await new Promise((resolve) => http?.close(resolve) ?? resolve(undefined));
  http = undefined;
});

describe('a connection the server never answers', () => {
  it('is given up after requestTimeout and made again, and the next answered one syncs', async () => {
    http = createServer();
    const io = bareSyncIo(http);
    let attempts = 0;
    // The first two handshakes are swallowed: the link is open, the CONNECT never answered.
    io.use((_socket, next) => {
      if (++attempts > 2) next();
    });
    await new Promise<void>((resolve) => http!.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
    const client = await startClient(url, { requestTimeout: 1000 });
    clients.push(client);
    await waitFor(() => client.sync.getStatus().connected, 'the third attempt to connect', 20_000);
    expect(attempts).toBe(3);
  }, 30_000);
});
