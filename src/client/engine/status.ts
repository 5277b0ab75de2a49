/** What the engine shows the app: its status, the changes that crossed the link, the result of a run. */
import { SyncError } from '../../shared/errors.js';
import type { PendingDocuments } from '../pending-log.js';
import type { EngineState } from './state.js';

/**
 * What getStatus() and status$ show. In a tab that is not the leader, every
 * field but `leader` and `enabled` is the leading tab's, as it published it
 * (this tab's own while no other tab is known to lead).
 */
export interface SyncStatus {
  /** The switch (enable() / disable()); in a multi-instance database the database's, set in any tab. */
  enabled: boolean;
  connected: boolean;
  /** False in a tab that is not the elected leader: another tab of the same database syncs. */
  leader: boolean;
  syncing: boolean;
  lastSyncTime: number | null;
  pendingEvents: number;
  conflicts: number;
  rejectedEvents: number;
  error: SyncError | null;
}

/** A change that crossed the link: its document and the server's sequence for it. */
export interface SyncedChange {
  collection: string;
  documentId: string;
  seq: number;
}

export const changeOf = ({ collection, documentId, seq }: { collection: string; documentId: string; seq: number }): SyncedChange => ({ collection, documentId, seq });

export interface SyncResult {
  success: boolean;
  error: SyncError | null;
  /** Events pushed plus remote events applied in this run. */
  syncedEvents: number;
}

export function updateStatus(state: EngineState, patch: Partial<SyncStatus>): void {
  if (state.status$.closed) return;
  const next = { ...state.status$.value, ...patch };
  const changed = (Object.keys(patch) as (keyof SyncStatus)[]).some((key) => next[key] !== state.status$.value[key]);
  if (changed) state.status$.next(next);
}

export function refreshCounts(state: EngineState, error?: SyncError): void {
  if (!state.replicator || state.status$.closed) return;
  const pending = state.replicator.pending;
  // Only for someone who watches (the other tabs, the app): else read when asked (see readPendingDocuments).
  if (state.pending$.observed) readPendingDocuments(state);
  updateStatus(state, {
    pendingEvents: pending.size,
    conflicts: state.replicator.conflicts.size,
    rejectedEvents: state.replicator.rejected.length,
    ...(error ? { error } : {}),
  });
}

/**
 * Brings pending$ up to date with the log. Read again only when a document
 * joined or left the log, or the log was read again: the list is a walk of
 * the whole log (2.5 ms for 10,000 documents), too much for every refresh
 * of a bulk push nobody watches.
 */
export function readPendingDocuments(state: EngineState): void {
  const pending = state.replicator?.pending;
  const read = state.pendingRead;
  if (!pending || state.pending$.closed || (read?.log === pending && read.version === pending.documentsVersion)) return;
  state.pendingRead = { log: pending, version: pending.documentsVersion };
  const documents = pending.documents();
  if (!samePendingDocuments(documents, state.pending$.value)) state.pending$.next(documents);
}

export function samePendingDocuments(a: PendingDocuments, b: PendingDocuments): boolean {
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((collection) => {
    const x = a[collection]!;
    const y = b[collection];
    return y !== undefined && x.length === y.length && x.every((id, i) => id === y[i]);
  });
}

export function fail(state: EngineState, error: unknown): void {
  if (state.closed) return;
  const syncError = SyncError.from(error);
  state.logger.error({ err: error }, 'sync step failed');
  updateStatus(state, { error: syncError });
}

/**
 * An error that outlives a successful sync: a conflict a custom resolver
 * could not settle, or a change the server refused, until the app clears it.
 */
export function standingError(state: EngineState): SyncError | null {
  const replicator = state.replicator;
  if (!replicator) return null;
  const failed = [...replicator.conflicts.values()].find((conflict) => conflict.reason);
  if (failed) return new SyncError('CONFLICT_RESOLVER_FAILED', `${failed.collection}/${failed.documentId}: ${failed.reason}`);
  const rejected = replicator.rejected[replicator.rejected.length - 1];
  if (!rejected) return null;
  // Stored, and perhaps sent by the server: its details are checked as a peer's are.
  const refused = SyncError.fromWire(rejected.error);
  return new SyncError(refused.code, `${rejected.collection}/${rejected.documentId} was refused by the server: ${refused.message}`, refused.details);
}
