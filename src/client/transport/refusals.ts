/** What the server's refusals and errors say, and how long each one makes the next connection wait. */
import { SyncError } from '../../shared/errors.js';
import { wireErrorSchema } from '../../shared/protocol/wire.js';

/** The longest wait a server's retryAfterMs may impose on reconnecting. */
const MAX_RETRY_AFTER_MS = 60_000;
/** The wait before connecting again after a refusal the same credentials will meet again, or after REPLACED. */
export const REFUSED_WAIT_MS = 15_000;
const TERMINAL_REFUSALS: ReadonlySet<string> = new Set(['UNAUTHENTICATED', 'CLIENT_ID_TAKEN', 'UNSUPPORTED_PROTOCOL']);

/**
 * Why a connection attempt failed: the server's refusal (the error's `data`),
 * or a server not reached. A refusal this client cannot read (a code it does
 * not know, from a later server) is still the server's answer, not a network
 * failure.
 */
export function connectError(error: Error & { data?: unknown }, serverUrl: string): SyncError {
  const refusal = wireErrorSchema.safeParse(error.data);
  if (refusal.success) return SyncError.fromWire(refusal.data);
  if (typeof error.data === 'object' && error.data !== null) {
    const { code, message } = error.data as { code?: unknown; message?: unknown };
    const said = `${typeof code === 'string' ? code : 'no code'}${typeof message === 'string' ? `: ${message}` : ''}`;
    const unread = new SyncError('INVALID_MESSAGE', `sync server ${serverUrl} refused the connection with an answer this client cannot read (${said.slice(0, 200)})`);
    unread.fromPeer = true;
    return unread;
  }
  return new SyncError('NOT_CONNECTED', `cannot reach sync server ${serverUrl}: ${error.message}`);
}

/** An error the server sent on its own, not as the answer to a request. */
export function serverError(raw: unknown): SyncError {
  const wire = wireErrorSchema.safeParse(raw);
  return wire.success ? SyncError.fromWire(wire.data) : new SyncError('INVALID_MESSAGE', 'malformed error message from server');
}

/** The least wait before connecting again after a failed attempt. */
export function waitAfterRefusal(refusal: SyncError): number {
  // A busy server says when to come back (spread over its backlog): not sooner.
  const retryAfterMs = refusal.retryAfterMs();
  if (retryAfterMs !== undefined && retryAfterMs > 0) return Math.min(retryAfterMs, MAX_RETRY_AFTER_MS);
  // A refusal the same token will get again is not worth a retry every second, and each one counts
  // against the address's failed logins, shared by every device behind the same NAT.
  return TERMINAL_REFUSALS.has(refusal.code) ? REFUSED_WAIT_MS : 0;
}
