/**
 * A slow network link on loopback: a TCP proxy that delivers every chunk
 * half a round trip late and no faster than the link's bandwidth, each
 * direction on its own, in order. What a phone on a mobile network or a
 * ship on a satellite link sees, for scenarios that run both systems
 * through it.
 */
import { createServer, connect, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export interface LinkOptions {
  /** Round-trip time added, in milliseconds. */
  rttMs: number;
  /** Bandwidth of each direction, in megabits per second. */
  mbitPerSecond: number;
}

export interface SlowLink {
  port: number;
  close(): Promise<void>;
}

export async function startSlowLink(targetPort: number, link: LinkOptions): Promise<SlowLink> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    relay(client, upstream, link);
    relay(upstream, client, link);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Forwards `from` to `to` as the link would: each chunk leaves once the one
 * before it has, and arrives half a round trip later. One queue per
 * direction, drained in order by one timer: separate timers per chunk could
 * fire out of order (Node rounds their delays to whole milliseconds and
 * counts them from a loop time that goes stale while the thread is busy),
 * which would corrupt the stream.
 */
function relay(from: Socket, to: Socket, link: LinkOptions): void {
  const bytesPerMs = (link.mbitPerSecond * 1_000_000) / 8 / 1000;
  const queue: { chunk: Buffer | null; dueAt: number }[] = [];
  // When the link has finished sending what it was given so far.
  let linkFreeAt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const drain = () => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.dueAt <= now) {
      const { chunk } = queue.shift()!;
      if (to.destroyed) continue;
      if (chunk) to.write(chunk);
      else to.end();
    }
    if (queue.length > 0) timer = setTimeout(drain, queue[0]!.dueAt - now);
  };
  const enqueue = (chunk: Buffer | null) => {
    const now = performance.now();
    linkFreeAt = Math.max(linkFreeAt, now) + (chunk ? chunk.length / bytesPerMs : 0);
    queue.push({ chunk, dueAt: linkFreeAt + link.rttMs / 2 });
    timer ??= setTimeout(drain, queue[0]!.dueAt - now);
  };
  from.on('data', (chunk: Buffer) => enqueue(chunk));
  // The end of the stream travels behind its last chunk.
  from.on('end', () => enqueue(null));
}
