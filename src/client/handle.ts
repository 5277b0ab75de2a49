/**
 * What an RxDB user reaches for on a replication: waits for the first sync
 * and for being in sync, the errors and the activity as streams, and a way
 * to stop. Built on the status the engine publishes (in a tab that does not
 * lead, the leading tab's), so it behaves the same in every tab.
 */
import { Observable, distinctUntilChanged, filter, firstValueFrom, map } from 'rxjs';
import { SyncError } from '../shared/errors.js';
import type { SyncedChange, SyncStatus } from './engine.js';

export interface SyncHandle {
  /**
   * Resolves once a sync run has completed since the plugin was added:
   * everything pending then was pushed and the server's changes were pulled
   * to its latest. Rejects with CLOSED when the database closes or cancel()
   * is called first. Waits as long as that takes (offline, it waits until
   * the device is back).
   */
  awaitInitialSync(): Promise<void>;
  /**
   * Resolves when this device holds what the server has, as far as it can
   * know: the initial sync is done, it is connected (live changes arrive as
   * they are made), no run is going and nothing waits to be pushed. Rejects
   * with CLOSED as awaitInitialSync() does.
   */
  awaitInSync(): Promise<void>;
  /** Each error as the status shows it (a run that failed, a refused connection, a server error). */
  readonly error$: Observable<SyncError>;
  /** True while a sync run goes on. */
  readonly active$: Observable<boolean>;
  /** Server changes applied here, per live message or pull page (in the tab that syncs). */
  readonly received$: Observable<SyncedChange[]>;
  /** This device's changes the server acknowledged, per push (in the tab that syncs). */
  readonly sent$: Observable<SyncedChange[]>;
  /** Stops syncing for this database instance for good (disable() instead pauses, and is kept across reloads). */
  cancel(): Promise<void>;
}

/** `status$` must replay the current status to each subscriber (a BehaviorSubject's observable). */
export function createHandle(
  status$: Observable<SyncStatus>,
  engine: { close(): Promise<void>; whenLogged(): Promise<void>; received$: Observable<SyncedChange[]>; sent$: Observable<SyncedChange[]> },
): SyncHandle {
  const startedAt = Date.now();
  let cancelled = false;
  const until = async (done: (status: SyncStatus) => boolean): Promise<void> => {
    if (cancelled) throw closedError();
    try {
      await firstValueFrom(status$.pipe(filter(done)));
    } catch {
      // status$ completed: the database closed, or cancel().
      throw closedError();
    }
    if (cancelled) throw closedError();
  };
  const initialDone = (status: SyncStatus) => status.lastSyncTime !== null && status.lastSyncTime >= startedAt;
  return {
    awaitInitialSync: () => until(initialDone),
    async awaitInSync() {
      // A write the app just made is counted as pending once it is logged.
      await engine.whenLogged();
      await until((status) => initialDone(status) && status.connected && !status.syncing && status.pendingEvents === 0);
    },
    error$: status$.pipe(
      map((status) => status.error),
      distinctUntilChanged(),
      filter((error): error is SyncError => error !== null),
    ),
    active$: status$.pipe(
      map((status) => status.syncing),
      distinctUntilChanged(),
    ),
    received$: readOnly(engine.received$),
    sent$: readOnly(engine.sent$),
    async cancel() {
      cancelled = true;
      await engine.close();
    },
  };
}

/** An observable a subscriber cannot push into (piping a Subject would give a Subject again). */
export function readOnly<T>(source: Observable<T>): Observable<T> {
  return new Observable<T>((subscriber) => source.subscribe(subscriber));
}

function closedError(): SyncError {
  return new SyncError('CLOSED', 'sync was cancelled or the database closed');
}
