/**
 * A slow network link on loopback: a TCP proxy that delivers every chunk
 * half a round trip late and no faster than the link's bandwidth, each
 * direction on its own, in order. What a phone on a mobile network or a
 * ship on a satellite link sees, for scenarios that run both systems
 * through it. Without link options it adds nothing and carries every
 * chunk at once.
 *
 * The link can also die and come back (`cut`, `restore`), as a radio link
 * does: see those methods.
 */
import { createServer, connect, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

export interface LinkOptions {
  /** Round-trip time added, in milliseconds. */
  rttMs: number;
  /** Bandwidth of each direction, in megabits per second. */
  mbitPerSecond: number;
}

export interface RestoreOptions {
  /**
   * Destroy every connection that was open at some point of the outage
   * (both its ends see the socket close), instead of carrying it on: the
   * case of a peer whose TCP gave up meanwhile, or of a device that came
   * back with another address. Connections made after the restore pass.
   */
  reset?: boolean;
}

export interface SlowLink {
  port: number;
  /**
   * Stops carrying bytes either way without closing anything, as a radio
   * link that dies: both ends keep their sockets open and hear nothing.
   * What is sent meanwhile is held, as TCP keeps unacknowledged bytes to
   * send again; connections opened meanwhile are accepted and held alike
   * (their handshake waits).
   */
  cut(): void;
  /**
   * Carries again: what was held goes out in order, as TCP's retransmission
   * delivers it once the link is back (the wait for TCP's next
   * retransmission, which grows during a long outage, is not modelled), and
   * new connections pass. With `reset`, connections that lived through the
   * outage are destroyed instead.
   */
  restore(options?: RestoreOptions): void;
  close(): Promise<void>;
}

interface Connection {
  client: Socket;
  upstream: Socket;
  relays: Relay[];
  /** Open at some point while the link was cut. */
  sawCut: boolean;
  /** One of its sockets failed while the link was cut: both are destroyed once it is restored, not before. */
  failed: boolean;
}

export async function startSlowLink(targetPort: number, link?: LinkOptions): Promise<SlowLink> {
  const sockets = new Set<Socket>();
  const connections = new Set<Connection>();
  const state = { cut: false };
  const destroy = (connection: Connection) => {
    connection.client.destroy();
    connection.upstream.destroy();
    connections.delete(connection);
  };
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    const connection: Connection = { client, upstream, relays: [], sawCut: state.cut, failed: false };
    connections.add(connection);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => {
        sockets.delete(socket);
        if (client.destroyed && upstream.destroyed) connections.delete(connection);
      });
      socket.on('error', () => {
        // A failure must not cross a dead link: the other end learns of it once the link is back.
        if (state.cut) connection.failed = true;
        else destroy(connection);
      });
    }
    connection.relays.push(relay(client, upstream, link, state), relay(upstream, client, link, state));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    cut() {
      state.cut = true;
      for (const connection of connections) connection.sawCut = true;
    },
    restore(options = {}) {
      state.cut = false;
      for (const connection of [...connections]) {
        if (connection.failed || (options.reset && connection.sawCut)) destroy(connection);
        else for (const held of connection.relays) held.resume();
        connection.sawCut = false;
      }
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      connections.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface Relay {
  /** Delivers what was held while the link was cut, then carries on. */
  resume(): void;
}

/**
 * Forwards `from` to `to` as the link would: each chunk leaves once the one
 * before it has, and arrives half a round trip later. One queue per
 * direction, drained in order by one timer: separate timers per chunk could
 * fire out of order (Node rounds their delays to whole milliseconds and
 * counts them from a loop time that goes stale while the thread is busy),
 * which would corrupt the stream. While the link is cut the queue only grows.
 */
function relay(from: Socket, to: Socket, link: LinkOptions | undefined, state: { cut: boolean }): Relay {
  const bytesPerMs = link ? (link.mbitPerSecond * 1_000_000) / 8 / 1000 : Number.POSITIVE_INFINITY;
  const halfRtt = link ? link.rttMs / 2 : 0;
  const queue: { chunk: Buffer | null; dueAt: number }[] = [];
  // When the link has finished sending what it was given so far.
  let linkFreeAt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deliver = (chunk: Buffer | null) => {
    if (to.destroyed) return;
    if (chunk) to.write(chunk);
    else to.end();
  };
  const drain = () => {
    timer = undefined;
    if (state.cut) return;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.dueAt <= now) deliver(queue.shift()!.chunk);
    if (queue.length > 0) timer = setTimeout(drain, queue[0]!.dueAt - now);
  };
  const enqueue = (chunk: Buffer | null) => {
    const now = performance.now();
    linkFreeAt = Math.max(linkFreeAt, now) + (chunk ? chunk.length / bytesPerMs : 0);
    const dueAt = linkFreeAt + halfRtt;
    // A link that adds nothing passes the chunk on at once (a slow link's chunks are never due yet).
    if (dueAt <= now && queue.length === 0 && !state.cut) {
      deliver(chunk);
      return;
    }
    queue.push({ chunk, dueAt });
    if (!state.cut) timer ??= setTimeout(drain, queue[0]!.dueAt - now);
  };
  from.on('data', (chunk: Buffer) => enqueue(chunk));
  // The end of the stream travels behind its last chunk.
  from.on('end', () => enqueue(null));
  return {
    resume() {
      clearTimeout(timer);
      timer = undefined;
      drain();
    },
  };
}
