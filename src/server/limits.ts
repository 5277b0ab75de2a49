/**
 * Per-connection and per-user limits: a fixed-window message counter and a
 * registry of each user's open connections. Both live in this process, so
 * with several server instances each instance enforces its own share.
 */
import { SyncError } from '../shared/errors.js';
import type { LoginLimitOptions, RateLimitOptions } from './options.js';

/** Counts hits per key in fixed windows of `windowMs`. */
export class FixedWindowCounter {
  private readonly windows = new Map<string, { start: number; count: number }>();
  private lastSweep = 0;

  constructor(private readonly windowMs: number) {}

  /** Counts one hit; returns 0 when it is within `max`, otherwise the ms until the window resets. */
  hit(key: string, max: number, now = Date.now()): number {
    const window = this.count(key, now);
    return window.count > max ? window.start + this.windowMs - now : 0;
  }

  /** Counts one hit and returns the key's window as it now stands. */
  count(key: string, now = Date.now()): { start: number; count: number } {
    this.sweep(now);
    let window = this.windows.get(key);
    if (!window || now - window.start >= this.windowMs) {
      window = { start: now, count: 0 };
      this.windows.set(key, window);
    }
    window.count++;
    return window;
  }

  /** The key's current window, without counting a hit; undefined when it has none. */
  peek(key: string, now = Date.now()): { start: number; count: number } | undefined {
    const window = this.windows.get(key);
    return window && now - window.start < this.windowMs ? window : undefined;
  }

  forget(key: string): void {
    this.windows.delete(key);
  }

  get size(): number {
    return this.windows.size;
  }

  /** Drops finished windows now and then, so keys of users who left do not pile up. */
  private sweep(now: number): void {
    if (now - this.lastSweep < this.windowMs) return;
    this.lastSweep = now;
    for (const [key, window] of this.windows) {
      if (now - window.start >= this.windowMs) this.windows.delete(key);
    }
  }
}

/** The rate limit of `rateLimit`: each connection, and all of one user's connections together. */
export class RateLimiter {
  private readonly perConnection: FixedWindowCounter;
  private readonly perUser: FixedWindowCounter;
  private readonly refusedByUser: FixedWindowCounter;

  constructor(private readonly options: RateLimitOptions) {
    this.perConnection = new FixedWindowCounter(options.windowMs);
    this.perUser = new FixedWindowCounter(options.windowMs);
    this.refusedByUser = new FixedWindowCounter(options.windowMs);
  }

  /**
   * Counts one message; returns the RATE_LIMITED error when it is over either
   * limit. `flooding` is set when the connection went on sending while refused,
   * past `maxRefused` messages in one window: a client that reads its answers
   * waits instead, so only a flood gets there.
   */
  check(socketId: string, userKey: string | undefined, now = Date.now()): { error: SyncError; flooding: boolean } | undefined {
    const { max, maxPerUser = max, maxRefused = max, windowMs, message } = this.options;
    const connection = this.perConnection.count(socketId, now);
    const connectionWait = connection.count > max ? connection.start + windowMs - now : 0;
    const userWait = userKey === undefined ? 0 : this.perUser.hit(userKey, maxPerUser, now);
    const retryAfterMs = Math.max(connectionWait, userWait);
    if (retryAfterMs === 0) return undefined;
    const refused = userWait > 0 && connectionWait === 0 ? this.refusedForUser(socketId, now) : connection.count - max;
    const error = new SyncError('RATE_LIMITED', message, {
      scope: connectionWait >= userWait ? 'connection' : 'user',
      limit: connectionWait >= userWait ? max : maxPerUser,
      windowMs,
      retryAfterMs,
    });
    return { error, flooding: refused > maxRefused };
  }

  /** Messages of one connection refused for its user's limit in the current window. */
  private refusedForUser(socketId: string, now: number): number {
    return this.refusedByUser.count(socketId, now).count;
  }

  forgetConnection(socketId: string): void {
    this.perConnection.forget(socketId);
    this.refusedByUser.forget(socketId);
  }
}

/**
 * Failed logins, per connection and per remote address. Past either limit
 * `authenticate` is not asked again: a guesser gets a handful of tries per
 * connection and per address each window, whatever it sends.
 */
export class LoginLimiter {
  private readonly byAddress: FixedWindowCounter;
  private readonly byConnection = new WeakMap<object, number>();

  constructor(private readonly options: LoginLimitOptions) {
    this.byAddress = new FixedWindowCounter(options.windowMs);
  }

  /** Throws RATE_LIMITED when this connection or address has failed too often to be heard now. */
  assertMayTry(connection: object, address: string, now = Date.now()): void {
    const { perConnection, perAddress, windowMs } = this.options;
    if ((this.byConnection.get(connection) ?? 0) >= perConnection) {
      throw new SyncError('RATE_LIMITED', `${perConnection} failed logins on this connection: open a new one`, { scope: 'login', limit: perConnection });
    }
    const window = this.byAddress.peek(address, now);
    if (window && window.count >= perAddress) {
      throw new SyncError('RATE_LIMITED', `too many failed logins from this address; try again later`, {
        scope: 'login',
        limit: perAddress,
        windowMs,
        retryAfterMs: window.start + windowMs - now,
      });
    }
  }

  /** Counts a failed login; true when the connection has used up its tries and should be closed. */
  failed(connection: object, address: string, now = Date.now()): boolean {
    const count = (this.byConnection.get(connection) ?? 0) + 1;
    this.byConnection.set(connection, count);
    this.byAddress.count(address, now);
    return count >= this.options.perConnection;
  }
}

/** The open (or being admitted) connections of each user. */
export class UserConnections {
  private readonly byUser = new Map<string, Set<string>>();

  count(userKey: string): number {
    return this.byUser.get(userKey)?.size ?? 0;
  }

  sockets(userKey: string): string[] {
    return [...(this.byUser.get(userKey) ?? [])];
  }

  add(userKey: string, socketId: string): void {
    const set = this.byUser.get(userKey) ?? new Set<string>();
    set.add(socketId);
    this.byUser.set(userKey, set);
  }

  remove(userKey: string, socketId: string): void {
    const set = this.byUser.get(userKey);
    if (!set) return;
    set.delete(socketId);
    if (set.size === 0) this.byUser.delete(userKey);
  }
}

/** The default `userKey`: a string or number user itself, or an object user's string or number `id`. */
export function defaultUserKey(user: unknown): string | undefined {
  if (typeof user === 'string') return user;
  if (typeof user === 'number' && Number.isFinite(user)) return String(user);
  if (user && typeof user === 'object') {
    const id = (user as { id?: unknown }).id;
    if (typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id))) return String(id);
  }
  return undefined;
}
