/**
 * The one state object every replication step works on, what of it is
 * stored, and how it is read and written. The steps are free functions over
 * this object, in the files beside this one.
 */
import type { RxDatabase } from 'rxdb';
import { Subject } from 'rxjs';
import { DocumentMap } from '../../shared/document-map.js';
import type { WireError } from '../../shared/errors.js';
import { HybridLogicalClock } from '../../shared/hlc.js';
import type { Logger } from '../../shared/logger.js';
import type { SyncEvent } from '../../shared/protocol/index.js';
import type { ScopeSelector } from '../../shared/scope.js';
import { randomId } from '../../shared/ids.js';
import { AckedVersions, type StoredAckedPage } from '../acked.js';
import type { Shadow } from '../documents.js';
import { createAttachmentBook, type AttachmentBook } from './attachments.js';
import type { MetaStore, MetaWrite } from '../meta-store.js';
import { PendingLog, type StoredPage } from '../pending-log.js';
import type { DocumentVersion, Strategy } from '../strategies/types.js';

export interface PersistedState {
  clientId: string;
  /** Server sequence each collection has pulled through. */
  checkpoints: Record<string, number>;
  /** RxDB storage checkpoint each collection's local changes are logged through. */
  logged: Record<string, unknown>;
  /** Pending entries with keys up to this one have been sent (see PendingLog.markSent). */
  sentThrough?: string;
  /** Per scoped collection, what this client holds (see HeldScope). */
  scopes?: Record<string, HeldScope>;
}

/**
 * What a scoped collection holds here: the documents of `held` as of
 * sequence `through` (where its last whole catch-up ended), and what came
 * after it. While it moves to another scope (`target`), it holds those of
 * `held` as of `through`, less those outside `target`, and pulls the
 * difference from checkpoint 0.
 */
export interface HeldScope {
  held: ScopeSelector | null;
  target?: ScopeSelector | null;
  through?: number;
}

/** A conflict kept for the app to settle (strategy `manual`, or a custom resolver that answered `'manual'` or threw). */
export interface StoredConflict {
  id: string;
  collection: string;
  documentId: string;
  local: DocumentVersion;
  remote: DocumentVersion | null;
  base: DocumentVersion | null;
  reason?: string;
  detectedAt: number;
}

/** A local change the server refused (for instance not authorized). It is not retried. */
export interface RejectedEvent {
  id: string;
  collection: string;
  documentId: string;
  event: SyncEvent;
  error: WireError;
  rejectedAt: number;
}

export interface ReplicationState {
  readonly db: RxDatabase;
  readonly meta: MetaStore;
  readonly strategyFor: (collection: string) => Strategy;
  readonly logger: Logger;
  /** What a database that never synced starts from; load() reads what is stored into this same object. */
  readonly persisted: PersistedState;
  pending: PendingLog;
  /** Versions of acknowledged pushes not yet folded into shadows. */
  acked: AckedVersions;
  readonly conflicts: Map<string, StoredConflict>;
  readonly rejected: RejectedEvent[];
  readonly conflicts$: Subject<StoredConflict[]>;
  readonly rejected$: Subject<RejectedEvent[]>;
  /**
   * Server versions taken from the change events of the app's first write
   * over a document the plugin wrote: the base of the change, until
   * recordLocalChanges keeps it as a shadow.
   */
  readonly captured: DocumentMap<Shadow>;
  /**
   * The version at which each document was said to leave this client's
   * scope: a version before it that arrives later (a page asked for before
   * the leave, a live message already on its way) is stale and must not
   * bring the document back. That version itself may, when a page or a live
   * message shows it in the scope held then: a leave can have been judged
   * in a scope held before.
   */
  leftAt: DocumentMap<number>;
  /** Per collection, the restarts of its scope in this process (see scopeRestarts). */
  readonly restarts: Map<string, number>;
  /**
   * Writes the plugin made to each collection's documents (any tab's, as
   * their change events tell). A state an app write's change event carries
   * is logged as it is only while this count has not moved since (see
   * LocalWrites); after a plugin write it may be stale, and storage is read.
   */
  readonly pluginWrites: Map<string, number>;
  /** The server's time minus this device's, in ms, as the last welcome said (0 while within CLOCK_TOLERANCE_MS). */
  clockOffset: number;
  /** Attachments: content the server holds, changes waiting for uploads, content to download. */
  readonly attachments: AttachmentBook;
  /** This device's time corrected by clockOffset. */
  readonly now: () => number;
  clock: HybridLogicalClock;
}

/**
 * The steps that run one another across files (a settled conflict logs the
 * app's latest write first; a conflicting push is settled). They are called
 * through the Replicator, as its own methods, so that a wrapper around one of
 * them (a test's spy, a stand-in that fails) sees every call.
 */
export interface Steps {
  recordLocalChanges(collectionName: string, documentIds: readonly string[], loggedThrough?: unknown): Promise<number>;
  resolveDocument(collectionName: string, documentId: string, remote: Shadow | null, attempt?: number): Promise<void>;
}

export const STATE_ID = 'state|main';

export function createState(db: RxDatabase, meta: MetaStore, strategyFor: (collection: string) => Strategy, logger: Logger): ReplicationState {
  const persisted: PersistedState = { clientId: randomId(), checkpoints: {}, logged: {} };
  const now = () => Date.now() + state.clockOffset;
  const state: ReplicationState = {
    db,
    meta,
    strategyFor,
    logger,
    persisted,
    pending: new PendingLog(),
    acked: new AckedVersions(),
    conflicts: new Map(),
    rejected: [],
    conflicts$: new Subject(),
    rejected$: new Subject(),
    captured: new DocumentMap(),
    leftAt: new DocumentMap(),
    restarts: new Map(),
    pluginWrites: new Map(),
    clockOffset: 0,
    attachments: createAttachmentBook(),
    now,
    clock: new HybridLogicalClock(persisted.clientId, now),
  };
  return state;
}

export function stateWrite(state: ReplicationState): MetaWrite {
  return { id: STATE_ID, kind: 'state', value: state.persisted };
}

/** Writes the state (checkpoints, scopes) as it stands. */
export async function saveState(state: ReplicationState): Promise<void> {
  await state.meta.write([stateWrite(state)]);
}

/** Moves the checkpoints of `collections` forward to `seq` (never back), durably. */
export async function moveCheckpoints(state: ReplicationState, collections: Iterable<string>, seq: number): Promise<void> {
  const { checkpoints } = state.persisted;
  for (const name of collections) checkpoints[name] = Math.max(checkpoints[name] ?? 0, seq);
  await state.meta.write([stateWrite(state)]);
}

/**
 * Reads the state, the log and the kept conflicts and rejections from the
 * plugin's storage; true when a state was stored. At start, and again when
 * a tab becomes the leader: the tab that led before it went on logging,
 * sending and settling after this tab first read them.
 */
export async function load(state: ReplicationState): Promise<boolean> {
  const persisted = state.persisted;
  const stored = (await state.meta.getAll<PersistedState>('state')).get(STATE_ID);
  if (stored) {
    persisted.clientId = stored.clientId;
    persisted.checkpoints = stored.checkpoints;
    persisted.logged = stored.logged;
    if (stored.sentThrough === undefined) delete persisted.sentThrough;
    else persisted.sentThrough = stored.sentThrough;
    if (stored.scopes === undefined) delete persisted.scopes;
    else persisted.scopes = stored.scopes;
  }
  state.pending = new PendingLog((await state.meta.getAll<StoredPage>('pending')).values(), persisted.sentThrough);
  state.acked = new AckedVersions(await state.meta.getAll<StoredAckedPage>('acked'));
  state.clock = new HybridLogicalClock(persisted.clientId, state.now);
  for (const entry of state.pending.all()) state.clock.receive(entry.event.hlc);
  state.captured.clear();
  state.conflicts.clear();
  state.rejected.splice(0);
  await loadKept(state);
  state.conflicts$.next([...state.conflicts.values()]);
  state.rejected$.next([...state.rejected]);
  return !!stored;
}

export async function loadKept(state: ReplicationState): Promise<void> {
  for (const conflict of (await state.meta.getAll<StoredConflict>('conflict')).values()) state.conflicts.set(conflict.id, conflict);
  const rejected = await state.meta.getAll<RejectedEvent>('rejected');
  state.rejected.push(...[...rejected.values()].sort((a, b) => a.rejectedAt - b.rejectedAt));
}
