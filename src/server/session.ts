/**
 * A connection's session: it ends when `authenticate` said it would
 * (TOKEN_EXPIRED), unless the client renews it with a fresh token first.
 */
import { isDeepStrictEqual } from 'node:util';
import { SyncError } from '../shared/errors.js';
import { MESSAGE, parseMessage, renewMessageSchema } from '../shared/protocol/index.js';
import { authenticateToken, runAt } from './auth.js';
import type { SyncSocket } from './handlers.js';
import type { Handshakes } from './handshake.js';
import type { Logger } from './logger.js';
import type { Authenticate } from './options.js';

/** The least time between two renewals of one connection's session. */
const MIN_RENEWAL_INTERVAL_MS = 1000;

/**
 * Disconnects the socket with TOKEN_EXPIRED when its session ends. `arm`
 * sets the timer to the session's current end (again after each renewal);
 * `cancel` clears it.
 */
export function sessionExpiry<User>(socket: SyncSocket<User>, log: Logger): { arm(): void; cancel(): void } {
  let cancel = () => {};
  return {
    arm() {
      cancel();
      const expiresAt = socket.data.expiresAt;
      if (expiresAt === undefined) return;
      cancel = runAt(expiresAt, () => {
        log.info('session expired, disconnecting');
        socket.emit(MESSAGE.error, new SyncError('TOKEN_EXPIRED', 'the session has expired: reconnect with a fresh token', { expiresAt }).toWire());
        socket.disconnect(true);
      });
    },
    cancel: () => cancel(),
  };
}

export class SessionRenewals<User = unknown> {
  /** When each connection last asked to renew its session. */
  private readonly renewedAt = new Map<string, number>();

  constructor(
    private readonly authenticate: Authenticate<User> | undefined,
    /** The login limit and the users' keys of the handshakes. */
    private readonly logins: Pick<Handshakes<User>, 'withinLoginLimit' | 'ownerKeyOf'>,
  ) {}

  /**
   * A fresh token for an open connection's session, so that it goes on
   * without a disconnect (and without the second or so offline a reconnect
   * costs). The token must name the same user; a refusal counts as a failed
   * login, and the session still ends when it was going to (TOKEN_EXPIRED).
   */
  async renew(socket: SyncSocket<User>, raw: unknown): Promise<void> {
    const { token } = parseMessage(renewMessageSchema, raw, 'renew message');
    const authenticate = this.authenticate;
    if (!authenticate) throw new SyncError('INVALID_MESSAGE', 'this server has no sessions to renew: it does not authenticate');
    // authenticate is the app's (often a call to an identity provider): a connection does not get to run it in a loop.
    const now = Date.now();
    const last = this.renewedAt.get(socket.id);
    if (last !== undefined && now - last < MIN_RENEWAL_INTERVAL_MS) {
      throw new SyncError('RATE_LIMITED', `one renewal per ${MIN_RENEWAL_INTERVAL_MS} ms`, { scope: 'renewal', retryAfterMs: last + MIN_RENEWAL_INTERVAL_MS - now });
    }
    this.renewedAt.set(socket.id, now);
    const session = await this.logins.withinLoginLimit(socket, async () => {
      const renewal = await authenticateToken(socket, token, authenticate, 'renewal refused');
      const [renewed, current] = [this.logins.ownerKeyOf(renewal.user), this.logins.ownerKeyOf(socket.data.user)];
      // Users without a key are compared whole: two keyless users are not the same user.
      const sameUser = renewed !== undefined && current !== undefined ? renewed === current : isDeepStrictEqual(renewal.user, socket.data.user);
      if (!sameUser) throw new SyncError('UNAUTHENTICATED', 'the renewal token names another user: a session stays with its user');
      return renewal;
    });
    socket.data.user = session.user;
    if (session.expiresAt === undefined) delete socket.data.expiresAt;
    else socket.data.expiresAt = session.expiresAt;
  }

  /** Forgets a connection that ended. */
  forget(socketId: string): void {
    this.renewedAt.delete(socketId);
  }
}
