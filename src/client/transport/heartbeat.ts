/**
 * Dead-link detection: a link that drops without closing (a van in a
 * tunnel, Wi-Fi gone) sends no close, and socket.io alone would notice only
 * after its ping interval and timeout together (45 s by default).
 */
import type { Manager } from 'socket.io-client';

/** The most heartbeatTimeout grows, as a multiple, after it cut requests short. */
const MAX_PATIENCE = 32;

/** The patience after a request was cut short: perhaps a link too slow for the answer in that time, not a dead one. */
export function morePatience(patience: number): number {
  return Math.min(patience * 2, MAX_PATIENCE);
}

/** How long the server may be silent before the link is taken for dead: it pings every `interval` ms. */
export function silenceLimit(heartbeatTimeout: number, interval: number, patience: number): number {
  return Math.max(heartbeatTimeout, 2 * interval + 500) * patience;
}

/**
 * Calls `onSilent` (with how long it was) once nothing came from the server
 * on `engine` for `timeout` ms; every packet counts. Returns the function
 * that stops watching.
 */
export function watchHeartbeat(engine: Manager['engine'], timeout: number, onSilent: (silent: number) => void): () => void {
  let heard = Date.now();
  let watchdog: ReturnType<typeof setTimeout>;
  // Not a timer reset per packet (a browser's timers cannot be refreshed): one check per timeout.
  const check = () => {
    const silent = Date.now() - heard;
    if (silent < timeout) {
      watchdog = setTimeout(check, timeout - silent);
      return;
    }
    onSilent(silent);
  };
  const onHeartbeat = () => {
    heard = Date.now();
  };
  engine.on('heartbeat', onHeartbeat);
  watchdog = setTimeout(check, timeout);
  return () => {
    clearTimeout(watchdog);
    engine.off('heartbeat', onHeartbeat);
  };
}
