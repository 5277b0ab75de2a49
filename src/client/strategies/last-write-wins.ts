import { compareHlc } from '../../shared/hlc.js';
import type { Conflict, Resolution } from './types.js';

/**
 * The write with the later hybrid logical clock wins whole. Clocks end with
 * the client id, so equal times still order the same way on every device.
 */
export function lastWriteWins({ local, remote }: Conflict): Resolution {
  if (!remote) return { action: 'keep-local' };
  return compareHlc(local.hlc, remote.hlc) > 0 ? { action: 'keep-local' } : { action: 'keep-remote' };
}
