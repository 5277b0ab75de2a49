/**
 * Servers in the benchmark listen on one loopback port, reused run after run.
 * socket.io-client keeps a module-level Manager per server URL, and that
 * Manager keeps the first client made for the URL (with its whole database)
 * alive after the client is closed. With a new port per run every run would
 * leak its client; with one port only the warm-up's first client stays.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { io, type Socket } from 'socket.io-client';

let port = 0;

export async function listenOnLoopback(server: Server): Promise<number> {
  try {
    await listen(server, port);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0) throw error;
    await listen(server, 0);
  }
  port = (server.address() as AddressInfo).port;
  return port;
}

function listen(server: Server, wanted: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => reject(error);
    server.once('error', onError);
    server.listen(wanted, '127.0.0.1', () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** A bare socket.io connection of its own (forceNew: outside socket.io-client's per-URL Manager cache), once connected. */
export async function connectOwnSocket(url: string, auth?: Record<string, unknown>): Promise<Socket> {
  const socket = io(url, { forceNew: true, transports: ['websocket'], reconnection: false, ...(auth ? { auth } : {}) });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  return socket;
}
