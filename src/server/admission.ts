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
 * Work that waits, in arrival order, for a turn with budget left. What
 * waited `maxWaitMs` is refused with the time to come back: when what waits
 * now will have been served, at the rate the queue is being served, plus a
 * share of the time those refused meanwhile take, so that they do not all
 * return in one wave. (Refusing as they come what would wait too long at
 * the measured rate was tried: a rate measured while turns were slow sent
 * thousands away for seconds, and the server then sat idle: a 10,000-device
 * storm took 10 s in one run and 58 s in the next.) Each turn serves from the
 * front while the budget lasts and at most `perTurn` items: most of an
 * item's cost comes after `serve` returns (the HTTP parse of a connection
 * runs on the next tick, a handshake's authentication in later microtasks),
 * where the budget cannot see it. The queue costs nothing per waiting item
 * and turn.
 */
/** The least a refused item is asked to wait. */
const MIN_COME_BACK_MS = 500;
/** How long a measured rate stands for what the server can do now. */
const RATE_KEPT_MS = 5000;

export class TurnQueue<T> {
  private readonly items: { item: T; since: number }[] = [];
  private head = 0;
  private scheduled = false;
  private closed = false;
  private servedInTurn = 0;
  private readonly endTurn = () => {
    this.servedInTurn = 0;
  };
  /** Items served in the current second and the rate of the last whole one (per second; 0 before the queue was ever busy a second). */
  private served = { since: -1, count: 0, perSecond: 0, at: -Infinity };
  /** Items refused in the current second and the last one: the wave the next come-back times spread. */
  private refused = { second: 0, count: 0, last: 0 };
  /** Items that waited for a later turn, and those expired. */
  readonly stats = { deferred: 0, expired: 0 };

  constructor(
    private readonly budget: Pick<TurnBudget, 'mayStart'>,
    private readonly maxWaitMs: number,
    private readonly perTurn: number,
    private readonly serve: (item: T) => void,
    /** Refuses an item; `comeBackMs` is when it should try again. */
    private readonly expire: (item: T, comeBackMs: number) => void,
    /** Items no longer worth serving or expiring (a closed socket). */
    private readonly gone: (item: T) => boolean = () => false,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** Serves `item` now if nothing waits and the turn has budget; else queues it. */
  offer(item: T): void {
    if (this.closed) return this.serve(item);
    if (this.length === 0 && this.mayServe()) return this.serve(item);
    const now = this.clock();
    this.stats.deferred++;
    this.items.push({ item, since: now });
    this.schedule();
  }

  /**
   * When a refused item should come back: once what waits now is served,
   * plus a random share of the time the items refused this second and the
   * last take to serve. Before any rate was measured, as if one turn's
   * worth were served each 10 ms.
   */
  private comeBackMs(now: number): number {
    const second = Math.floor(now / 1000);
    if (second !== this.refused.second) this.refused = { second, count: 0, last: second === this.refused.second + 1 ? this.refused.count : 0 };
    const wave = ++this.refused.count + this.refused.last;
    const perSecond = this.rate(now) || this.perTurn * 100;
    return Math.round(((this.length + Math.random() * wave) / perSecond) * 1000) + MIN_COME_BACK_MS;
  }

  private refuse(item: T, now: number): void {
    this.stats.expired++;
    this.expire(item, this.comeBackMs(now));
  }

  get length(): number {
    return this.items.length - this.head;
  }

  /** Serves (or expires) whatever waits at once; later offers are served as they come. */
  close(rest: 'serve' | 'expire' = 'serve'): void {
    this.closed = true;
    const now = this.clock();
    const waiting = this.items.slice(this.head);
    this.items.length = 0;
    this.head = 0;
    for (const { item } of waiting) {
      if (this.gone(item)) continue;
      if (rest === 'serve') this.serve(item);
      else this.refuse(item, now);
    }
  }

  /** Counts the item about to be served when this turn may serve one more. */
  private mayServe(): boolean {
    if (this.servedInTurn >= this.perTurn || !this.budget.mayStart()) return false;
    if (this.servedInTurn++ === 0) setImmediate(this.endTurn);
    return true;
  }

  /** Counts a served item toward the rate, which is measured only over seconds in which items waited. */
  private count(now: number): void {
    if (this.served.since < 0) this.served.since = now;
    const elapsed = now - this.served.since;
    if (elapsed >= 1000) {
      this.served = elapsed < 2000 ? { since: now, count: 0, perSecond: (this.served.count * 1000) / elapsed, at: now } : { ...this.served, since: now, count: 0 };
    }
    this.served.count++;
  }

  /** The rate items were served at while they waited, if measured in the last few seconds; 0 when unknown. */
  private rate(now: number): number {
    return now - this.served.at <= RATE_KEPT_MS ? this.served.perSecond : 0;
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
    const now = this.clock();
    while (this.length > 0) {
      const next = this.items[this.head]!;
      if (this.gone(next.item)) {
        this.head++;
      } else if (now - next.since >= this.maxWaitMs) {
        this.head++;
        this.refuse(next.item, now);
      } else if (this.mayServe()) {
        this.head++;
        this.count(now);
        this.serve(next.item);
      } else {
        break;
      }
    }
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
      // Idle from here: the next busy stretch measures afresh.
      this.served = { ...this.served, since: -1, count: 0 };
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
    const queue = new TurnQueue<Upgrade>(
      this.budget,
      this.maxWaitMs,
      this.perTurn,
      ({ request, socket, head }) => {
        for (const listener of added) listener.call(httpServer, request, socket, head);
      },
      ({ socket }, comeBackMs) => refuse(socket, Math.max(1, Math.ceil(comeBackMs / 1000))),
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
