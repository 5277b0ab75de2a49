import { SyncError } from '../../shared/errors.js';
import { isClientId, isStorableText } from '../../shared/protocol/index.js';

/** The longest user key a claim records, in characters. */
export const MAX_USER_KEY_LENGTH = 1024;

/**
 * Refuses a claim that not every storage could record as it is, before any
 * of them tries: the same verdict on every storage.
 */
export function assertClaimable(clientId: string, userKey: string): void {
  if (!isClientId(clientId)) throw new SyncError('INVALID_MESSAGE', 'cannot claim a client id that is no client id (see clientIdSchema)');
  if (typeof userKey !== 'string' || userKey.length === 0 || userKey.length > MAX_USER_KEY_LENGTH || !isStorableText(userKey)) {
    throw new SyncError('INTERNAL', `cannot claim client id ${clientId}: a user key is 1 to ${MAX_USER_KEY_LENGTH} characters without a NUL character or an unpaired surrogate`);
  }
}
