import type { Conflict, Resolution } from './types.js';

/** The server's version stands and the local change is dropped. With no server version, there is nothing to lose to. */
export function serverWins({ remote }: Conflict): Resolution {
  return remote ? { action: 'keep-remote' } : { action: 'keep-local' };
}
