/** The connection to the sync server: the transport's events, going online and offline. */
import { Transport, type Welcome } from '../transport.js';
import { onLive } from './live.js';
import { startDownloads } from './attachments.js';
import { requestSync } from './schedule.js';
import { newLiveBasis, requireReplicator, type EngineState } from './state.js';
import { fail, standingError, updateStatus } from './status.js';
import { resubscribe } from './subscription.js';

/** The transport of the leading tab, its events wired to the engine. */
export function openTransport(state: EngineState): Transport {
  return new Transport(state.options, requireReplicator(state).clientId, {
    onConnect: (welcome) => onConnect(state, welcome),
    onDisconnect: (reason) => {
      resubscribe(state);
      state.liveBasis = newLiveBasis();
      updateStatus(state, { connected: false });
      state.logger.info({ reason }, 'disconnected from sync server');
    },
    onConnectError: (error) => updateStatus(state, { connected: false, error }),
    onLive: (message) => onLive(state, message),
    onServerError: (error) => {
      state.logger.warn({ code: error.code, reason: error.message }, 'sync server reported an error');
      updateStatus(state, { error });
    },
  }, state.logger);
}

export function goOnline(state: EngineState): void {
  state.transport?.connect();
  clearInterval(state.intervalTimer);
  state.intervalTimer = setInterval(() => {
    if (state.status$.value.connected) void requestSync(state, { push: true, pull: true });
  }, state.options.syncInterval);
}

export function goOffline(state: EngineState): void {
  clearInterval(state.intervalTimer);
  clearTimeout(state.retryTimer);
  state.retryTimer = undefined;
  clearTimeout(state.livePullTimer);
  state.transport?.disconnect();
  updateStatus(state, { connected: false });
}

function onConnect(state: EngineState, { limits, clockOffset }: Welcome): void {
  state.logger.info({ serverUrl: state.options.serverUrl }, 'connected to sync server');
  state.retryAttempt = 0;
  // Never a message the server would refuse for its size: its limits bound every push from here on.
  state.pushBatchSize = Math.min(state.options.batchSize, limits.maxEventsPerPush);
  state.pushBatchBytes = Math.min(state.options.maxBatchBytes, limits.maxPayloadBytes);
  updateStatus(state, { connected: true, error: standingError(state) });
  // Before anything is pushed on this connection (the queue keeps the order): a wrong device clock is set right.
  const replicator = requireReplicator(state);
  void state.queue.run(() => replicator.correctClock(clockOffset, limits.maxClockDrift)).catch((error: unknown) => fail(state, error));
  if (state.options.autoSync) void requestSync(state, { push: true, pull: true });
  startDownloads(state);
}
