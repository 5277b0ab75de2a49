/** The handshake: protocol version, the app's `authenticate`, and session expiry. */
import type { Socket } from 'socket.io';
import { SyncError } from '../shared/errors.js';
import { PROTOCOL_VERSION, handshakeSchema, parseMessage, type Handshake } from '../shared/protocol/index.js';
import type { Authenticate, AuthSession } from './options.js';

export interface Admission<User> {
  handshake: Handshake;
  user: User;
  /** When the session ends (ms since the epoch), if `authenticate` said so. */
  expiresAt?: number;
}

/** Checks the handshake and runs `authenticate`; throws a SyncError that the client sees in connect_error. */
export async function admit<User>(socket: Socket, authenticate: Authenticate<User> | undefined): Promise<Admission<User>> {
  const auth = socket.handshake.auth as Record<string, unknown> | undefined;
  if (auth && typeof auth.protocolVersion === 'number' && auth.protocolVersion !== PROTOCOL_VERSION) {
    // `supported` lets a client of a later release know which version to speak.
    throw new SyncError('UNSUPPORTED_PROTOCOL', `protocol version ${auth.protocolVersion} is not supported; this server speaks protocol version ${PROTOCOL_VERSION}`, {
      supported: [PROTOCOL_VERSION],
    });
  }
  const handshake = parseMessage(handshakeSchema, auth, 'handshake');
  if (!authenticate) return { handshake, user: {} as User };
  return { handshake, ...(await authenticateToken(socket, handshake.token, authenticate, 'authentication failed')) };
}

/**
 * Runs `authenticate` on a token, at the handshake or for a renewal of an
 * open connection's session (`refused` opens the error's message).
 */
export async function authenticateToken<User>(socket: Socket, token: string | undefined, authenticate: Authenticate<User>, refused: string): Promise<{ user: User; expiresAt?: number }> {
  let answer: unknown;
  try {
    answer = await authenticate(socket, token);
  } catch (error) {
    if (error instanceof SyncError && (error.code === 'TOKEN_EXPIRED' || error.code === 'UNAUTHENTICATED')) throw error;
    throw new SyncError('UNAUTHENTICATED', `${refused}: ${SyncError.from(error).message}`);
  }
  const session = sessionOf<User>(answer);
  if (!session.user) throw new SyncError('UNAUTHENTICATED', `${refused}: the token was not accepted`);
  // Compared with the time authenticate answered, not the time it was asked.
  if (session.expiresAt !== undefined && session.expiresAt <= Date.now()) {
    throw new SyncError('TOKEN_EXPIRED', 'the token has expired; fetch a fresh one', { expiresAt: session.expiresAt });
  }
  return session;
}

/**
 * Tells an {@link AuthSession} from a plain user: only a plain object whose own
 * keys are exactly `user` and `expiresAt` is a session. Such an object with an
 * `expiresAt` that is not a finite number is an app bug, refused loudly rather
 * than taken as a user that never expires.
 */
export function sessionOf<User>(answer: unknown): { user: User; expiresAt?: number } {
  if (!isSessionShape(answer)) return { user: answer as User };
  const { user, expiresAt } = answer as AuthSession<User>;
  if (typeof expiresAt !== 'number' || !Number.isFinite(expiresAt)) {
    throw new SyncError('INTERNAL', 'authenticate returned { user, expiresAt } whose expiresAt is not a time in ms since the epoch');
  }
  return { user, expiresAt };
}

function isSessionShape(value: unknown): boolean {
  if (!value || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return false;
  const keys = Object.keys(value);
  return keys.length === 2 && keys.includes('user') && keys.includes('expiresAt');
}

/** The longest delay setTimeout takes; a later expiry is reached in several steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Runs `action` at `time` (ms since the epoch); returns a cancel function. */
export function runAt(time: number, action: () => void): () => void {
  let timer: ReturnType<typeof setTimeout>;
  const arm = () => {
    const wait = time - Date.now();
    timer = setTimeout(wait > MAX_TIMER_MS ? arm : action, Math.max(0, Math.min(wait, MAX_TIMER_MS)));
    timer.unref?.();
  };
  arm();
  return () => clearTimeout(timer);
}
