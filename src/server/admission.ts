/**
 * Admission for a storm of connections. After a restart, thousands of
 * devices connect within a second; each costs a WebSocket upgrade, engine.io's
 * and socket.io's handshakes, authentication and the replies' writes. Served
 * as they came, one poll's worth held the loop for seconds (5.4 s with
 * 10,000 devices on two cores): heartbeats went unanswered and devices timed
 * out, which brought them back again. Metered by the turn budget that
 * messages share, a turn starts upgrades and handshakes only while it has
 * time left, and those it cannot start wait in arrival order.
 *
 * What waited `maxWaitMs` is told to come back instead, at once: an upgrade
 * gets a 503 with Retry-After, a handshake SERVER_BUSY with retryAfterMs. Its
 * device backs off and tries again, rather than timing out behind a queue
 * the server cannot serve in time.
 */
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TurnBudget } from './guard.js';

type UpgradeListener = (this: HttpServer, request: IncomingMessage, socket: Duplex, head: Buffer) => void;

interface Upgrade {
  request: IncomingMessage;
  socket: Duplex;
  head: Buffer;
}

/**
 * Work that waits, in arrival order, for a turn with budget left; what
 * waited `maxWaitMs` is expired instead of served. Each turn serves from the
 * front while the budget lasts and at most `perTurn` items: most of an
 * item's cost comes after `serve` returns (the HTTP parse of a connection
 * runs on the next tick, a handshake's authentication in later microtasks),
 * where the budget cannot see it. The queue costs nothing per waiting item
 * and turn.
 */
export class TurnQueue<T> {
  private readonly items: { item: T; since: number }[] = [];
  private head = 0;
  private scheduled = false;
  private closed = false;
  private servedInTurn = 0;
  private readonly endTurn = () => {
    this.servedInTurn = 0;
  };
  /** Items that waited for a later turn, and those expired. */
  readonly stats = { deferred: 0, expired: 0 };

  constructor(
    private readonly budget: Pick<TurnBudget, 'mayStart'>,
    private readonly maxWaitMs: number,
    private readonly perTurn: number,
    private readonly serve: (item: T) => void,
    private readonly expire: (item: T, waitedMs: number) => void,
    /** Items no longer worth serving or expiring (a closed socket). */
    private readonly gone: (item: T) => boolean = () => false,
  ) {}

  /** Serves `item` now if nothing waits and the turn has budget; else queues it. */
  offer(item: T): void {
    if (this.closed) return this.serve(item);
    if (this.length === 0 && this.mayServe()) return this.serve(item);
    this.stats.deferred++;
    this.items.push({ item, since: performance.now() });
    this.schedule();
  }

  get length(): number {
    return this.items.length - this.head;
  }

  /** Serves (or expires) whatever waits at once; later offers are served as they come. */
  close(rest: 'serve' | 'expire' = 'serve'): void {
    this.closed = true;
    const now = performance.now();
    const waiting = this.items.slice(this.head);
    this.items.length = 0;
    this.head = 0;
    for (const { item, since } of waiting) {
      if (this.gone(item)) continue;
      if (rest === 'serve') this.serve(item);
      else this.expire(item, now - since);
    }
  }

  /** Counts the item about to be served when this turn may serve one more. */
  private mayServe(): boolean {
    if (this.servedInTurn >= this.perTurn || !this.budget.mayStart()) return false;
    if (this.servedInTurn++ === 0) setImmediate(this.endTurn);
    return true;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.drain();
    });
  }

  private drain(): void {
    const now = performance.now();
    while (this.length > 0) {
      const next = this.items[this.head]!;
      if (this.gone(next.item)) {
        this.head++;
      } else if (now - next.since >= this.maxWaitMs) {
        this.head++;
        this.stats.expired++;
        this.expire(next.item, now - next.since);
      } else if (this.mayServe()) {
        this.head++;
        this.serve(next.item);
      } else {
        break;
      }
    }
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head);
      this.head = 0;
    }
    if (this.length > 0) this.schedule();
  }
}

/**
 * socket.io's WebSocket upgrades, held in a TurnQueue: the request is read
 * (cheap), the upgrade and engine.io's handshake (not) wait for their turn.
 */
export class UpgradeGate {
  private queue?: TurnQueue<Upgrade>;
  private detach?: () => void;

  constructor(
    private readonly budget: Pick<TurnBudget, 'mayStart'>,
    private readonly maxWaitMs: number,
    /** Upgrades a turn may start at most. */
    private readonly perTurn: number,
  ) {}

  /** Gates the upgrade listeners `attach()` adds to `httpServer` (socket.io's); the app's own stay as they are. */
  wrap(httpServer: HttpServer, attach: () => void): void {
    const before = new Set(httpServer.listeners('upgrade'));
    attach();
    const added = (httpServer.listeners('upgrade') as UpgradeListener[]).filter((listener) => !before.has(listener));
    const retryAfter = Math.max(1, Math.ceil(this.maxWaitMs / 1000));
    const queue = new TurnQueue<Upgrade>(
      this.budget,
      this.maxWaitMs,
      this.perTurn,
      ({ request, socket, head }) => {
        for (const listener of added) listener.call(httpServer, request, socket, head);
      },
      ({ socket }) => refuse(socket, retryAfter),
      ({ socket }) => socket.destroyed,
    );
    const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => queue.offer({ request, socket, head });
    for (const listener of added) httpServer.off('upgrade', listener);
    httpServer.on('upgrade', onUpgrade);
    this.queue = queue;
    this.detach = () => {
      httpServer.off('upgrade', onUpgrade);
      for (const listener of added) httpServer.on('upgrade', listener);
    };
  }

  get stats(): { deferred: number; expired: number } {
    return this.queue?.stats ?? { deferred: 0, expired: 0 };
  }

  /** Gives the HTTP server socket.io's listeners back; what still waits is refused. */
  close(): void {
    this.detach?.();
    this.detach = undefined;
    this.queue?.close('expire');
  }
}

/** A 503 with Retry-After, written without reading the request. */
function refuse(socket: Duplex, retryAfterSeconds: number): void {
  const body = 'the server is busy: try again later\n';
  socket.resume(); // what it sent is dropped, and its end is seen
  socket.end(
    `HTTP/1.1 503 Service Unavailable\r\nRetry-After: ${retryAfterSeconds}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
  );
  setTimeout(() => socket.destroy(), 1000).unref();
}
