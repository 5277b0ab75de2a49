/**
 * What one connection may cost the server. Its messages are served one at a
 * time, with at most `maxQueued` waiting behind the one in service, and its
 * unsent replies stay under `maxUnsentBytes`. Past either bound the
 * connection is dropped with a reason: a flood costs the flooder its
 * connection, not the other clients their latency or the server its memory.
 */
import { SyncError } from '../shared/errors.js';

export interface GuardLimits {
  maxQueued: number;
  maxUnsentBytes: number;
}

/** The part of an engine.io connection the guard reads: its queue of packets and its transport. */
export interface EngineConnection {
  writeBuffer?: { data?: unknown }[];
  transport?: { socket?: { bufferedAmount?: number; terminate?: () => void } };
  readyState?: string;
}

export class ConnectionGuard {
  private readonly queue: (() => Promise<void>)[] = [];
  private serving = false;
  private closed = false;

  constructor(
    private readonly limits: GuardLimits,
    private readonly conn: EngineConnection,
    /** Drops the connection; called once, with the reason sent to the client. */
    private readonly drop: (reason: SyncError) => void,
  ) {}

  /** Serves `task` after the messages before it; drops the connection instead when too many wait. */
  enqueue(task: () => Promise<void>): void {
    if (this.closed) return;
    if (this.queue.length >= this.limits.maxQueued) {
      this.fail(
        new SyncError('TOO_MANY_REQUESTS', `more than ${this.limits.maxQueued} messages waited for an answer: wait for each answer before sending more`, {
          limit: this.limits.maxQueued,
        }),
      );
      return;
    }
    this.queue.push(task);
    if (!this.serving) void this.serve();
  }

  /** Drops the connection when its unsent replies pass the bound; true when it did. */
  checkUnsent(): boolean {
    if (this.closed) return true;
    const bytes = unsentBytes(this.conn, this.limits.maxUnsentBytes);
    if (bytes <= this.limits.maxUnsentBytes) return false;
    this.fail(
      new SyncError('SLOW_CONSUMER', `more than ${this.limits.maxUnsentBytes} bytes of replies were not read: the connection is closed`, {
        bytes,
        limit: this.limits.maxUnsentBytes,
      }),
    );
    return true;
  }

  /** Drops the connection with `reason` (a flood seen elsewhere, for instance by the rate limit). */
  fail(reason: SyncError): void {
    if (this.closed) return;
    this.close();
    this.drop(reason);
    // A peer that reads nothing would hold the closing handshake and its unsent bytes for ws's 30 s.
    const timer = setTimeout(() => {
      if (this.conn.readyState !== 'closed') this.conn.transport?.socket?.terminate?.();
    }, 1000);
    timer.unref?.();
  }

  /** Stops serving: what waits is dropped. */
  close(): void {
    this.closed = true;
    this.queue.length = 0;
  }

  private async serve(): Promise<void> {
    this.serving = true;
    try {
      for (let task = this.queue.shift(); task && !this.closed; task = this.queue.shift()) await task();
    } finally {
      this.serving = false;
    }
  }
}

/**
 * Bytes a connection has been handed and not yet sent: packets engine.io
 * holds while the transport is busy, and what the WebSocket holds for the
 * kernel. Counting stops once past `enough`.
 */
export function unsentBytes(conn: EngineConnection, enough = Number.POSITIVE_INFINITY): number {
  let bytes = conn.transport?.socket?.bufferedAmount ?? 0;
  for (const packet of conn.writeBuffer ?? []) {
    if (bytes > enough) break;
    const data = packet.data;
    if (typeof data === 'string') bytes += data.length;
    else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) bytes += data.byteLength;
  }
  return bytes;
}
