/**
 * Sync runs: when one runs, what it does in which order (subscribe, push,
 * pull, scoped pulls), and the retry after a run that failed.
 */
import { backoffDelay } from '../../shared/backoff.js';
import { SyncError } from '../../shared/errors.js';
import { forgetHeldThrough, MAX_HELD_SEQUENCES } from './gaps.js';
import { pullPlain } from './pull.js';
import { pushAll } from './push.js';
import { isScoped } from './scope.js';
import { pullScoped } from './scoped-pull.js';
import { requireReplicator, type EngineState, type SyncWant } from './state.js';
import { refreshCounts, standingError, updateStatus, type SyncResult } from './status.js';
import { subscribe, type PendingSubscription } from './subscription.js';

/** Deleted metadata documents (acknowledged events) that may pile up before they are purged from storage. */
const META_COMPACTION_THRESHOLD = 2000;

/** Runs (or joins) a sync run; requests made while one runs are folded into the next. */
export function requestSync(state: EngineState, want: SyncWant): Promise<SyncResult> {
  state.want.push ||= want.push;
  state.want.pull ||= want.pull;
  if (!state.running) {
    const run: Promise<SyncResult> = drain(state).finally(() => {
      if (state.running === run) state.running = undefined;
    });
    state.running = run;
  }
  return state.running;
}

function wanted(state: EngineState): boolean {
  return state.want.push || state.want.pull;
}

async function drain(state: EngineState): Promise<SyncResult> {
  let syncedEvents = 0;
  updateStatus(state, { syncing: true });
  try {
    const replicator = requireReplicator(state);
    do {
      while (wanted(state)) {
        const want = state.want;
        state.want = { push: false, pull: false };
        syncedEvents += await runOnce(state, want);
      }
      state.retryAttempt = 0;
      // Idle: acknowledged versions become per-document shadows, one push batch at a time.
      while (!wanted(state) && (await state.queue.run(() => replicator.foldAcked())));
      if (!wanted(state) && state.meta && state.meta.deletedSinceCompaction >= META_COMPACTION_THRESHOLD) {
        const meta = state.meta;
        await state.queue.run(() => meta.compact());
      }
    } while (wanted(state));
    // The run ends here, in the same step as the last look at the requests: from now on a
    // request (say from a status$ subscriber seeing `syncing: false`) starts a run of its own.
    state.running = undefined;
    updateStatus(state, { syncing: false, lastSyncTime: Date.now(), error: standingError(state) });
    return { success: true, error: null, syncedEvents };
  } catch (error) {
    const syncError = SyncError.from(error);
    state.want = { push: false, pull: false };
    state.running = undefined;
    updateStatus(state, { syncing: false, error: syncError });
    state.logger.warn({ code: syncError.code, reason: syncError.message }, 'sync failed');
    scheduleRetry(state, syncError.retryAfterMs());
    return { success: false, error: syncError, syncedEvents };
  } finally {
    refreshCounts(state);
  }
}

async function runOnce(state: EngineState, want: SyncWant): Promise<number> {
  const transport = state.transport;
  const replicator = requireReplicator(state);
  if (!transport || !state.status$.value.enabled) throw new SyncError('DISABLED', 'sync is disabled');
  let synced = 0;
  // Not waited for before pushing and pulling: the server takes one socket's messages in order and
  // joins the rooms in the step that takes this one, before it reads anything for a pull sent behind
  // it, so no event falls between the two, and every (re)connection saves a round trip. (A server
  // that joins later, a sharded Redis adapter say, can leave an event to the next pull: late, never
  // lost, since its sequence is past the checkpoint.)
  const subscription: PendingSubscription = {};
  if (want.pull && state.options.useWebSockets && !state.subscribed) subscription.promise = subscribe(state, transport);
  // Push everything before pulling: a pull then never meets an event whose fate is unknown.
  synced += await pushAll(state, transport);
  if (!want.pull) return synced;
  const scoped = [...state.collections].filter((name) => isScoped(state, name));
  synced += await pullPlain(state, transport, [...state.collections].filter((name) => !scoped.includes(name)), subscription);
  if (scoped.length > 0 && subscription.promise) {
    await subscription.promise;
    subscription.promise = undefined;
  }
  for (const name of scoped) synced += await pullScoped(state, transport, name);
  await subscription.promise;
  // What every checkpoint has passed needs no naming any more.
  forgetHeldThrough(state, Math.min(...[...state.collections].map((name) => replicator.state.checkpoints[name] ?? 0)));
  if (state.heldSequences.size > MAX_HELD_SEQUENCES) state.heldSequences.clear();
  return synced;
}

export function scheduleRetry(state: EngineState, retryAfterMs?: number): void {
  const { maxRetries } = state.options.retry;
  // A retry already scheduled stands: a burst of failing runs must not use up the budget at once.
  if (state.retryTimer !== undefined) return;
  const status = state.status$.value;
  if (state.retryAttempt >= maxRetries || !status.enabled || !status.connected || state.closed) return;
  const backoff = backoffFor(state, state.retryAttempt);
  state.retryAttempt++;
  state.retryTimer = setTimeout(() => {
    state.retryTimer = undefined;
    void requestSync(state, { push: true, pull: true });
  }, Math.max(backoff, retryAfterMs ?? 0));
}

/** The wait before retry number `attempt` (from 0): the transport's reconnection backoff, with the same options. */
export function backoffFor(state: EngineState, attempt: number): number {
  const { retryDelay, maxDelay, useExponentialBackoff } = state.options.retry;
  return backoffDelay(attempt, { base: retryDelay, max: maxDelay, exponential: useExponentialBackoff });
}
