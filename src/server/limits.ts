/**
 * Per-connection and per-user limits: a fixed-window message counter and a
 * registry of each user's open connections. Both live in this process, so
 * with several server instances each instance enforces its own share.
 */
import { SyncError } from '../shared/errors.js';
import type { RateLimitOptions } from './options.js';

/** Counts hits per key in fixed windows of `windowMs`. */
export class FixedWindowCounter {
  private readonly windows = new Map<string, { start: number; count: number }>();
  private lastSweep = 0;

  constructor(private readonly windowMs: number) {}

  /** Counts one hit; returns 0 when it is within `max`, otherwise the ms until the window resets. */
  hit(key: string, max: number, now = Date.now()): number {
    this.sweep(now);
    let window = this.windows.get(key);
    if (!window || now - window.start >= this.windowMs) {
      window = { start: now, count: 0 };
      this.windows.set(key, window);
    }
    window.count++;
    return window.count > max ? window.start + this.windowMs - now : 0;
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

  constructor(private readonly options: RateLimitOptions) {
    this.perConnection = new FixedWindowCounter(options.windowMs);
    this.perUser = new FixedWindowCounter(options.windowMs);
  }

  /** Counts one message; returns the RATE_LIMITED error when it is over either limit. */
  check(socketId: string, userKey: string | undefined, now = Date.now()): SyncError | undefined {
    const { max, maxPerUser = max, windowMs, message } = this.options;
    const connectionWait = this.perConnection.hit(socketId, max, now);
    const userWait = userKey === undefined ? 0 : this.perUser.hit(userKey, maxPerUser, now);
    const retryAfterMs = Math.max(connectionWait, userWait);
    if (retryAfterMs === 0) return undefined;
    return new SyncError('RATE_LIMITED', message, {
      scope: connectionWait >= userWait ? 'connection' : 'user',
      limit: connectionWait >= userWait ? max : maxPerUser,
      windowMs,
      retryAfterMs,
    });
  }

  forgetConnection(socketId: string): void {
    this.perConnection.forget(socketId);
  }
}

/** The open (or being admitted) connections of each user. */
export class UserConnections {
  private readonly byUser = new Map<string, Set<string>>();

  count(userKey: string): number {
    return this.byUser.get(userKey)?.size ?? 0;
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
