import type { Resolution } from './types.js';

/** Nothing is decided: the conflict is kept until the app calls resolveConflict(). */
export function manual(): Resolution {
  return { action: 'manual' };
}
