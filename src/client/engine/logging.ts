/** The app's writes to the synced collections, logged into the pending log in steps. */
import type { RxChangeEventBulk } from 'rxdb';
import type { Subscription } from 'rxjs';
import { REMOTE_CONTEXT, type LocalWrites } from '../replicator.js';
import { PAGE_SIZE } from '../pending-log.js';
import { requestSync } from './schedule.js';
import { requireReplicator, type EngineState } from './state.js';
import { fail, refreshCounts } from './status.js';

/** The change events of an app's bulk write to a collection, as RxDB emits them. */
type AppBulk = RxChangeEventBulk<unknown>;

/** Logs the app's writes to collection `name` from now on, and those made since the stored checkpoint. */
export async function watch(state: EngineState, name: string): Promise<void> {
  const replicator = requireReplicator(state);
  const collection = replicator.collection(name);
  // Subscribe before recovering, so that no write falls between the two.
  const subscription = collection.eventBulks$.subscribe((bulk: AppBulk) => {
    if (bulk.isLocal) return;
    if (bulk.context === REMOTE_CONTEXT) {
      replicator.notePluginWrite(name);
      return;
    }
    replicator.noteLocalWrites(name, bulk.events);
    const ids = bulk.events.map((event) => event.documentId);
    // This tab's writes (their revision names this database instance) are logged as their events say;
    // another tab's are read back (see localWrites).
    const ownRevision = `-${state.db.token}`;
    const written = bulk.events.every((event) => event.documentData._rev.endsWith(ownRevision))
      ? replicator.localWrites(name, bulk.events)
      : undefined;
    logBulk(state, name, ids, bulk.checkpoint, written, subscription);
  });
  state.subscriptions.set(name, subscription);
  await state.queue.run(() => {
    // What a cut-off bulk left is after the stored checkpoint: recovered here, checkpoints may move again.
    state.unlogged.delete(name);
    return unloggedIfFailed(state, name, () => replicator.recover(name));
  });
  refreshCounts(state);
}

/**
 * Logs a bulk of the app's writes a push batch at a time (at most a page
 * of the log, 500), each step a task of its own in the queue: a push of
 * what the first steps logged goes out between the later ones, and each
 * step's events leave the log before many more are made. (Logged in one
 * task, a bulk of 10k took about four times as long per document: every
 * collection of the young generation met all of its events alive and
 * moved them, and the push waited for the last.) A bulk of a collection
 * whose steps are still running waits for them: a later write of a
 * document must be logged after an earlier one.
 *
 * The bulk's checkpoint is stored with its last step only, and not while
 * the collection has writes that were noted but not logged (`unlogged`):
 * a bulk cut off midway (close(), removeCollection(), a failed step) leaves
 * its rest to recover(), which starts from the stored checkpoint when the
 * collection is next watched. A collection removed and added again is
 * watched anew: a bulk noted before stops, and recover() logs the rest.
 */
function logBulk(state: EngineState, name: string, ids: readonly string[], checkpoint: unknown, written: LocalWrites | undefined, watching: Subscription): void {
  const replicator = requireReplicator(state);
  // The configured batch, not one lowered after a refusal: one oversized document must not leave every later bulk logged one by one.
  const size = Math.min(state.options.batchSize, PAGE_SIZE);
  const step = (start: number): Promise<void> => {
    if (state.closed || state.subscriptions.get(name) !== watching) {
      state.unlogged.add(name);
      return Promise.resolve();
    }
    const end = Math.min(start + size, ids.length);
    const last = end === ids.length;
    const whole = start === 0 && last;
    const part = written && !whole ? { ...written, events: written.events.slice(start, end) } : written;
    return state.queue
      .run(() =>
        unloggedIfFailed(state, name, () =>
          replicator.recordLocalChanges(name, whole ? ids : ids.slice(start, end), last && !state.unlogged.has(name) ? checkpoint : undefined, part),
        ),
      )
      .then(() => {
        afterLocalChange(state);
        if (!last) return step(end);
      });
  };
  const earlier = state.logging.get(name);
  if (!earlier && ids.length <= size) {
    // One step, queued at once, as the app's small writes are: several of them go out in one push.
    void step(0).catch((error: unknown) => fail(state, error));
    return;
  }
  const logged = (earlier ? earlier.then(() => step(0)) : step(0)).catch((error: unknown) => fail(state, error));
  state.logging.set(name, logged);
  void logged.then(() => {
    if (state.logging.get(name) === logged) state.logging.delete(name);
  });
}

/**
 * Runs a step that logs app writes; if it fails, the collection is marked
 * `unlogged`, inside the queue task, before the queue goes on to a later
 * bulk's last step (which then stores no checkpoint).
 */
async function unloggedIfFailed(state: EngineState, name: string, work: () => Promise<unknown>): Promise<void> {
  try {
    await work();
  } catch (error) {
    state.unlogged.add(name);
    throw error;
  }
}

/** Resolves once no bulk of app writes noted so far is being logged (each is logged, or was cut off). */
export async function logged(state: EngineState): Promise<void> {
  while (state.logging.size > 0) await Promise.all(state.logging.values());
}

/** Queues `task` once no bulk is being logged, in the same step as the last look: no bulk's steps fall on both sides of it. */
export async function afterLogging<T>(state: EngineState, task: () => Promise<T>): Promise<T> {
  for (;;) {
    await logged(state);
    // A bulk may have started since logged() last looked: then it is waited for too.
    if (state.logging.size === 0) return state.queue.run(task);
  }
}

/** The log changed here: the status counts it, and a live connection pushes it at once. */
export function afterLocalChange(state: EngineState): void {
  refreshCounts(state);
  const status = state.status$.value;
  if (status.enabled && state.options.autoSync && status.connected && state.options.useWebSockets) {
    void requestSync(state, { push: true, pull: false });
  }
}
