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

/**
 * Messages over maxPayloadBytes one connection may send before it is
 * dropped. The client never sends one (the welcome names the limit); each
 * costs the server a full parse, so a stream of them is a flood.
 */
export const MAX_OVERSIZED = 3;

const WS_CLOSED = 3;

/** The part of an engine.io connection the guard reads: its queue of packets and its transport. */
export interface EngineConnection {
  writeBuffer?: { data?: unknown }[];
  transport?: { socket?: { bufferedAmount?: number; readyState?: number; terminate?: () => void; _socket?: { pause?: () => void } } };
  readyState?: string;
}

/**
 * The time one turn of the event loop may spend starting messages, over
 * all connections. Each connection is served at most once a turn, but ten
 * thousand connections that reconnect at once each bring a catch-up pull:
 * served in one turn, SQLite's synchronous reads alone held the loop for
 * seconds, and heartbeats and pushes waited behind them. Past the budget,
 * what is left waits for the next turn, after the I/O that came meanwhile.
 */
export class TurnBudget {
  /** When the current turn's first message started (performance.now()); -1 between turns. */
  private started = -1;
  private readonly endTurn = () => {
    this.started = -1;
  };

  constructor(private readonly budgetMs: number) {}

  /**
   * True when a message may start now, while the turn is within its budget.
   * Asked just before the message starts, in the same synchronous step: a
   * promise would let every waiting connection pass the check before the
   * first of them had spent anything.
   */
  mayStart(): boolean {
    const now = performance.now();
    if (this.started < 0) {
      this.started = now;
      setImmediate(this.endTurn);
      return true;
    }
    return now - this.started < this.budgetMs;
  }

  /** Resolves in the first turn with budget left (this one, if it has some). */
  async start(): Promise<void> {
    while (!this.mayStart()) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

export class ConnectionGuard {
  private readonly queue: (() => Promise<void>)[] = [];
  private serving = false;
  private isClosed = false;
  /** Set while a message of this connection was served in the current turn of the event loop. */
  private servedThisTurn = false;
  private readonly endTurn = () => {
    this.servedThisTurn = false;
  };
  private oversized = 0;

  constructor(
    private readonly limits: GuardLimits,
    private readonly conn: EngineConnection,
    /** Drops the connection; called once, with the reason sent to the client. */
    private readonly drop: (reason: SyncError) => void,
    /** Shared by the server's connections. */
    private readonly budget?: TurnBudget,
  ) {}

  /** True once dropped or disconnected: nothing more of this connection is served. */
  get closed(): boolean {
    return this.isClosed;
  }

  /** Serves `task` after the messages before it; drops the connection instead when too many wait. */
  enqueue(task: () => Promise<void>): void {
    if (this.isClosed) return;
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

  /** Counts a message refused for its size; drops the connection past MAX_OVERSIZED. True when it did. */
  refusedOversized(limit: number): boolean {
    if (++this.oversized <= MAX_OVERSIZED) return false;
    this.fail(new SyncError('TOO_MANY_REQUESTS', `more than ${MAX_OVERSIZED} messages over maxPayloadBytes (${limit}): the connection is closed`, { limit }));
    return true;
  }

  /** Drops the connection when its unsent replies pass the bound; true when it did. */
  checkUnsent(): boolean {
    if (this.isClosed) return true;
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
    if (this.isClosed) return;
    this.close();
    // Not one more frame of a flood is read and decoded: what the peer still has in flight stays in the kernel.
    this.conn.transport?.socket?._socket?.pause?.();
    this.drop(reason);
    // A peer that reads nothing would hold the closing handshake and its unsent bytes for ws's 30 s
    // (engine.io calls the connection closed as soon as it asked the WebSocket to close).
    const ws = this.conn.transport?.socket;
    const timer = setTimeout(() => {
      if (ws?.readyState !== WS_CLOSED) ws?.terminate?.();
    }, 1000);
    timer.unref?.();
  }

  /** Stops serving: what waits is dropped. */
  close(): void {
    this.isClosed = true;
    this.queue.length = 0;
  }

  /**
   * Serves the queue in order, at most one message per turn of the event
   * loop. A handler that never waits for I/O (memory storage) resolves in
   * microtasks, and the frames one read of the socket delivers (up to 2 MB
   * a turn) are all dispatched in that turn: without the limit a flooder's
   * dozen pushes were served before any other connection's message was read
   * (90 ms a turn). Now the rest waits in the queue, where past maxQueued it
   * costs the flooder its connection, and another client waits about one
   * message.
   */
  private async serve(): Promise<void> {
    this.serving = true;
    try {
      while (this.queue.length > 0 && !this.isClosed) {
        if (this.servedThisTurn) await new Promise<void>((resolve) => setImmediate(resolve));
        if (this.budget && !this.budget.mayStart()) await this.budget.start();
        const task = this.queue.shift();
        if (!task || this.isClosed) break;
        this.servedThisTurn = true;
        setImmediate(this.endTurn);
        await task();
      }
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
