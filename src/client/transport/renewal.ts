/**
 * Renews the session over the open connection before it ends (a quarter
 * of what is left, at most a minute, before `expiresAt`), so that an
 * expiring token costs no disconnect. Only with an authToken function: a
 * fixed token cannot be fresher. A refused renewal leaves the session to
 * end as it would have (TOKEN_EXPIRED), and the reconnection asks for a
 * token again.
 */
import { SyncError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import type { RenewReply } from '../../shared/protocol/index.js';

/** The longest setTimeout delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A session is renewed at most this long before it ends. */
const RENEW_AHEAD_MS = 60_000;

/** What a renewal needs of the transport. */
export interface RenewalLink {
  readonly logger: Logger;
  /** Whether a fresher token can be had (an authToken function). */
  readonly renewable: boolean;
  /** The server's time minus this device's, as of the current connection's welcome; undefined while not welcomed. */
  clockOffset(): number | undefined;
  connected(): boolean;
  token(): Promise<string | undefined>;
  renew(token: string): Promise<RenewReply>;
}

/** How long to wait, from `now`, before renewing a session that ends at `expiresAt` (the server's time). */
export function renewalWait(expiresAt: number, clockOffset: number, now: number): number {
  // The server's time, on this device's clock.
  const left = expiresAt - clockOffset - now;
  return Math.max(0, left - Math.min(left / 4, RENEW_AHEAD_MS));
}

export class SessionRenewal {
  private timer?: ReturnType<typeof setTimeout>;

  constructor(private readonly link: RenewalLink) {}

  /** Renews the session that ends at `expiresAt` (null: never) in time; any renewal planned before is dropped. */
  schedule(expiresAt: number | null): void {
    clearTimeout(this.timer);
    const clockOffset = this.link.clockOffset();
    if (expiresAt === null || !this.link.renewable || clockOffset === undefined) return;
    const wait = renewalWait(expiresAt, clockOffset, Date.now());
    // A session of weeks: looked at again within a timer's reach (setTimeout fires at once past 2^31 ms).
    if (wait > MAX_TIMER_MS) {
      this.timer = setTimeout(() => this.schedule(expiresAt), MAX_TIMER_MS);
      return;
    }
    this.timer = setTimeout(() => void this.renew(expiresAt), wait);
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private async renew(ending: number): Promise<void> {
    const { logger } = this.link;
    try {
      const token = await this.link.token();
      if (!token || !this.link.connected()) return;
      const { expiresAt } = await this.link.renew(token);
      logger.debug({ expiresAt }, 'session renewed');
      // A renewal that did not move the end (the token source handed out the same token) is not asked again at once.
      if (expiresAt !== null && expiresAt <= ending) {
        logger.warn({ expiresAt }, 'the renewed session ends no later than before; it ends when it expires');
        return;
      }
      this.schedule(expiresAt);
    } catch (error) {
      const syncError = SyncError.from(error);
      logger.warn({ code: syncError.code, reason: syncError.message }, 'the session could not be renewed; it ends when it expires');
    }
  }
}
