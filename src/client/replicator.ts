/**
 * The replication core: turns local writes into pending events, applies the
 * server's answers and other clients' events, and settles conflicts. It does
 * no network I/O; the engine feeds it and serializes every call through one
 * queue, so no two of these steps ever interleave.
 *
 * The steps are free functions over one state object, in `replication/`:
 * local-changes (app writes into the pending log), upstream (push batches
 * and the server's answers), downstream (other clients' events), conflicts,
 * scopes, shadows (the server versions known here), clock, and state (the
 * object itself, loaded and saved). This class holds that object and is
 * what the engine and the tests call.
 */
import type { RxCollection, RxDatabase, RxDocumentData } from 'rxdb';
import type { Subject } from 'rxjs';
import type { WireError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { PushOutcome, RemoteEvent } from '../shared/protocol/index.js';
import type { Scope } from '../shared/scope.js';
import type { AckedVersions } from './acked.js';
import type { PendingEntry, Shadow } from './documents.js';
import type { MetaStore, MetaWrite } from './meta-store.js';
import type { PendingLog } from './pending-log.js';
import type { Strategy } from './strategies/types.js';
import { correctClock } from './replication/clock.js';
import { findPlaceholders, forgetWanted, holdForUploads, neededUploads, readLocal, storeDownloaded, type AttachmentBook, type NeededUpload, type WantedAttachment } from './replication/attachments.js';
import { collectionOf, notePluginWrite } from './replication/collections.js';
import { isHeld, resolveConflict, resolveDocument, type ConflictResolutionChoice } from './replication/conflicts.js';
import { applyRemote } from './replication/downstream.js';
import { localWrites, noteLocalWrites, recordLocalChanges, recover, type LocalWrites } from './replication/local-changes.js';
import { leaveAt, leaveScope, restartScope, scopeRestarts } from './replication/scopes.js';
import { foldAcked, getShadows } from './replication/shadows.js';
import {
  createState,
  load,
  loadKept,
  moveCheckpoints,
  saveState,
  stateWrite,
  type HeldScope,
  type PersistedState,
  type RejectedEvent,
  type ReplicationState,
  type Steps,
  type StoredConflict,
} from './replication/state.js';
import { applyPushResults, clearPending, clearRejected, reject, takeBatch } from './replication/upstream.js';

export { REMOTE_CONTEXT } from './replication/collections.js';
export { STATE_ID } from './replication/state.js';
export { SHADOWS_AT_ONCE } from './replication/upstream.js';
export type { ConflictResolutionChoice, HeldScope, LocalWrites, PersistedState, RejectedEvent, StoredConflict };

export class Replicator implements Steps {
  private readonly replication: ReplicationState;

  constructor(db: RxDatabase, meta: MetaStore, strategyFor: (collection: string) => Strategy, logger: Logger) {
    this.replication = createState(db, meta, strategyFor, logger);
  }

  get conflicts(): Map<string, StoredConflict> {
    return this.replication.conflicts;
  }

  get rejected(): RejectedEvent[] {
    return this.replication.rejected;
  }

  get conflicts$(): Subject<StoredConflict[]> {
    return this.replication.conflicts$;
  }

  get rejected$(): Subject<RejectedEvent[]> {
    return this.replication.rejected$;
  }

  /** What a database that never synced starts from; load() reads what is stored. */
  get state(): PersistedState {
    return this.replication.persisted;
  }

  get pending(): PendingLog {
    return this.replication.pending;
  }

  /** Versions of acknowledged pushes not yet folded into shadows. */
  get acked(): AckedVersions {
    return this.replication.acked;
  }

  get clientId(): string {
    return this.replication.persisted.clientId;
  }

  collection(name: string): RxCollection {
    return collectionOf(this.replication, name);
  }

  stateWrite(): MetaWrite {
    return stateWrite(this.replication);
  }

  isHeld(entry: PendingEntry): boolean {
    return isHeld(this.replication, entry);
  }

  // ---- attachments (replication/attachments.ts) ---------------------------------------

  get attachments(): AttachmentBook {
    return this.replication.attachments;
  }

  neededUploads(entries: readonly PendingEntry[]): ReturnType<typeof neededUploads> {
    return neededUploads(this.replication, entries);
  }

  holdForUploads(entries: readonly PendingEntry[]): void {
    holdForUploads(this.replication, entries);
  }

  readAttachment(source: Omit<NeededUpload, 'length' | 'entries'>): Promise<Blob> {
    return readLocal(this.replication, source);
  }

  storeDownloaded(wanted: WantedAttachment, content: Blob): Promise<boolean> {
    return storeDownloaded(this.replication, wanted, content);
  }

  forgetWanted(wanted: WantedAttachment): void {
    forgetWanted(this.replication, wanted);
  }

  findPlaceholders(collections: Iterable<string>): Promise<number> {
    return findPlaceholders(this.replication, collections);
  }

  // ---- local changes -> pending log (replication/local-changes.ts) ----------------

  recordLocalChanges(collectionName: string, documentIds: readonly string[], loggedThrough?: unknown, written?: LocalWrites): Promise<number> {
    return recordLocalChanges(this.replication, collectionName, documentIds, loggedThrough, written);
  }

  noteLocalWrites(collectionName: string, events: readonly { documentId: string; previousDocumentData?: RxDocumentData<unknown> }[]): void {
    noteLocalWrites(this.replication, collectionName, events);
  }

  localWrites(collectionName: string, events: LocalWrites['events']): LocalWrites {
    return localWrites(this.replication, collectionName, events);
  }

  notePluginWrite(collectionName: string): void {
    notePluginWrite(this.replication, collectionName);
  }

  recover(collectionName: string): Promise<number> {
    return recover(this.replication, this, collectionName);
  }

  // ---- push (replication/upstream.ts) -----------------------------------------------

  takeBatch(limit: number, maxBytes?: number): Promise<PendingEntry[]> {
    return takeBatch(this.replication, limit, maxBytes);
  }

  applyPushResults(batch: readonly PendingEntry[], outcomes: readonly PushOutcome[]): Promise<{ collection: string; documentId: string; seq: number }[]> {
    return applyPushResults(this.replication, this, batch, outcomes);
  }

  /** A change the server can never take (too large): set aside like a refused one. */
  rejectUnpushable(entry: PendingEntry, error: WireError): Promise<void> {
    return reject(this.replication, entry, error);
  }

  clearPending(): Promise<number> {
    return clearPending(this.replication);
  }

  clearRejected(): Promise<number> {
    return clearRejected(this.replication);
  }

  // ---- remote events (replication/downstream.ts) ------------------------------------

  applyRemote(
    events: readonly RemoteEvent[],
    mode: 'pull' | 'live',
    checkpoint?: { collections: readonly string[]; seq: number },
    handled?: Set<number>,
  ): Promise<number> {
    return applyRemote(this.replication, this, events, mode, checkpoint, handled);
  }

  moveCheckpoints(collections: Iterable<string>, seq: number): Promise<void> {
    return moveCheckpoints(this.replication, collections, seq);
  }

  // ---- scopes (replication/scopes.ts) -------------------------------------------------

  leaveScope(
    collectionName: string,
    documentIds: readonly string[] | undefined,
    outside?: Scope,
    seqs?: readonly number[],
    confirmed?: { has(documentId: string): boolean },
  ): Promise<number> {
    return leaveScope(this.replication, collectionName, documentIds, outside, seqs, confirmed);
  }

  leaveAt(collectionName: string, leaves: readonly { documentId: string; seq: number }[], scope: Scope): Promise<number> {
    return leaveAt(this.replication, collectionName, leaves, scope);
  }

  scopeRestarts(collectionName: string): number {
    return scopeRestarts(this.replication, collectionName);
  }

  restartScope(collectionName: string, scope: HeldScope): Promise<void> {
    return restartScope(this.replication, collectionName, scope);
  }

  // ---- conflicts (replication/conflicts.ts) -------------------------------------------

  resolveDocument(collectionName: string, documentId: string, remote: Shadow | null, attempt = 0): Promise<void> {
    return resolveDocument(this.replication, this, collectionName, documentId, remote, attempt);
  }

  resolveConflict(id: string, choice: ConflictResolutionChoice): Promise<void> {
    return resolveConflict(this.replication, id, choice);
  }

  // ---- state, clock and shadows ---------------------------------------------------------

  saveState(): Promise<void> {
    return saveState(this.replication);
  }

  load(): Promise<boolean> {
    return load(this.replication);
  }

  loadKept(): Promise<void> {
    return loadKept(this.replication);
  }

  correctClock(offset: number, maxAhead: number | null): Promise<number> {
    return correctClock(this.replication, offset, maxAhead);
  }

  getShadows(collection: string, ids: readonly string[]): Promise<Map<string, Shadow>> {
    return getShadows(this.replication, collection, ids);
  }

  foldAcked(): Promise<boolean> {
    return foldAcked(this.replication);
  }
}
