/**
 * The wait before reconnection or retry number `attempt` (from 0): `base`
 * doubled per attempt when exponential, capped at `max`, then jittered to a
 * random point in its upper half. Jitter spreads a fleet that lost the
 * server at the same moment (a restart, a dropped uplink) over the window
 * instead of bringing it back in one thundering wave; keeping the lower half
 * out means a flapping link still waits a real interval between attempts.
 */
export function backoffDelay(attempt: number, { base, max, exponential }: { base: number; max: number; exponential: boolean }): number {
  const ceiling = Math.min(base * 2 ** (exponential ? Math.min(attempt, 30) : 0), Math.max(max, base));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}
