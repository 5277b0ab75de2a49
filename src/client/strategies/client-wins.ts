import type { Resolution } from './types.js';

/** The local change stands; it is rebased on the server's head and pushed again. */
export function clientWins(): Resolution {
  return { action: 'keep-local' };
}
