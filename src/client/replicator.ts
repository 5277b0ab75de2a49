/**
 * The replication core: turns local writes into pending events, applies the
 * server's answers and other clients' events, and settles conflicts. It does
 * no network I/O; the engine feeds it and serializes every call through one
 * queue, so no two of these steps ever interleave.
 */
import { randomId } from '../shared/ids.js';
import { getChangedDocumentsSince, getHeightOfRevision, now, type RxCollection, type RxDatabase, type RxDocumentData } from 'rxdb';
import { Subject } from 'rxjs';
import { DocumentMap } from '../shared/document-map.js';
import { SyncError, type WireError } from '../shared/errors.js';
import { compareHlc, HybridLogicalClock, millisOf } from '../shared/hlc.js';
import type { Logger } from '../shared/logger.js';
import { withFields } from '../shared/json.js';
import type { DocumentHead, PushOutcome, RemoteEvent, SyncEvent } from '../shared/protocol/index.js';
import {
  buildChange,
  changeBetween,
  restatement,
  hasData,
  isSyncRevision,
  localState,
  newestVersion,
  shadowFromEvent,
  shadowFromHead,
  STAMP_FIELD,
  stampOf,
  stampValue,
  stateOfEvent,
  statesEqual,
  stripMeta,
  SYNC_REVISION_TOKEN,
  versionOf,
  type DocState,
  type KnownVersion,
  type PendingEntry,
  type Shadow,
  type VersionInfo,
} from './documents.js';
import type { MetaStore, MetaWrite } from './meta-store.js';
import { AckedVersions, type StoredAckedPage } from './acked.js';
import { PendingLog, type StoredPending } from './pending-log.js';
import type { DocumentVersion, Strategy } from './strategies/types.js';
import { ordersByClock } from './strategies/index.js';
import { matchesScope, type Scope, type ScopeSelector } from '../shared/scope.js';

/** Writes made by the plugin carry this context, so they are never logged as local changes (no echo). */
export const REMOTE_CONTEXT = 'rxdb-offline-sync-remote';

/** Left documents remembered at once (see leftAt); past it the memory starts again (a stale page is rare). */
const MAX_LEFT_REMEMBERED = 10_000;
/**
 * The `_meta` field that marks a tombstone the plugin wrote when the
 * document left this client's scope: no change of the app's, so that a
 * recovery reading the storage (a restart, another tab taking the lead)
 * never logs it as a delete. An app write over it gets a fresh `_meta`.
 */
const LEFT_FIELD = 'rxofflinesyncLeft';

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

/** A conflict kept for the app to settle (strategy `manual`, or a custom resolver that threw). */
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

export type ConflictResolutionChoice = 'keep-local' | 'keep-remote' | { data: Record<string, unknown> };

const shadowId = (collection: string, documentId: string) => `shadow|${collection}|${documentId}`;
const conflictId = (collection: string, documentId: string) => `conflict|${collection}|${documentId}`;
export const STATE_ID = 'state|main';
const MAX_RESOLVE_ATTEMPTS = 5;
/** A clock this close to the server's is left alone: the welcome's own travel time is about as much. */
const CLOCK_TOLERANCE_MS = 2000;
const RECOVERY_PAGE = 1000;
/** Acknowledged batches up to this size keep their shadows at once; larger ones as a page, folded when idle. */
export const SHADOWS_AT_ONCE = 32;

export class Replicator {
  readonly conflicts = new Map<string, StoredConflict>();
  readonly rejected: RejectedEvent[] = [];
  readonly conflicts$ = new Subject<StoredConflict[]>();
  readonly rejected$ = new Subject<RejectedEvent[]>();
  /**
   * Server versions taken from the change events of the app's first write
   * over a document the plugin wrote: the base of the change, until
   * recordLocalChanges keeps it as a shadow.
   */
  private readonly captured = new DocumentMap<Shadow>();
  /**
   * The version at which each document was said to leave this client's
   * scope: a version before it that arrives later (a page asked for before
   * the leave, a live message already on its way) is stale and must not
   * bring the document back. That version itself may, when a page or a live
   * message shows it in the scope held then: a leave can have been judged
   * in a scope held before.
   */
  private leftAt = new DocumentMap<number>();
  /** Per collection, the restarts of its scope in this process (see scopeRestarts). */
  private readonly restarts = new Map<string, number>();
  /**
   * Writes the plugin made to each collection's documents (any tab's, as
   * their change events tell). A state an app write's change event carries
   * is logged as it is only while this count has not moved since (see
   * LocalWrites); after a plugin write it may be stale, and storage is read.
   */
  private readonly pluginWrites = new Map<string, number>();

  /** What a database that never synced starts from; load() reads what is stored. */
  readonly state: PersistedState = { clientId: randomId(), checkpoints: {}, logged: {} };
  pending = new PendingLog();
  /** Versions of acknowledged pushes not yet folded into shadows. */
  acked = new AckedVersions();
  /** The server's time minus this device's, in ms, as the last welcome said (0 while within CLOCK_TOLERANCE_MS). */
  private clockOffset = 0;
  private readonly now = () => Date.now() + this.clockOffset;
  private clock = new HybridLogicalClock(this.state.clientId, this.now);

  constructor(
    private readonly db: RxDatabase,
    private readonly meta: MetaStore,
    private readonly strategyFor: (collection: string) => Strategy,
    private readonly logger: Logger,
  ) {}

  get clientId(): string {
    return this.state.clientId;
  }

  collection(name: string): RxCollection {
    const collection = this.db.collections[name];
    if (!collection) throw new SyncError('UNKNOWN_COLLECTION', `the database has no collection "${name}"`);
    return collection;
  }

  stateWrite(): MetaWrite {
    return { id: STATE_ID, kind: 'state', value: this.state };
  }

  /** True while a manual conflict holds this document back from pushing. */
  isHeld(entry: PendingEntry): boolean {
    return this.conflicts.has(conflictId(entry.event.collection, entry.event.documentId));
  }

  // ---- local changes -> pending log ------------------------------------------------

  /**
   * Compares each document's current local state with what the log or the
   * server already has and logs the difference. Idempotent: calling it twice,
   * or for a document the plugin itself wrote, logs nothing new.
   */
  async recordLocalChanges(collectionName: string, documentIds: readonly string[], loggedThrough?: unknown, written?: LocalWrites): Promise<number> {
    const collection = this.collection(collectionName);
    const fromEvents = written !== undefined && written.pluginWrites === this.pluginWritesTo(collectionName);
    // Each document's current state at the same index as its id. (A document named twice by one bulk
    // is logged twice, its later state last: the loop below is idempotent.)
    const ids = fromEvents ? written.events.map((event) => event.documentId) : [...new Set(documentIds)];
    const currents = fromEvents ? written.events.map((event) => event.documentData) : await this.findLocal(collection, ids).then((found) => ids.map((id) => found.get(id)));
    const versions = await this.serverVersions(collectionName, ids, currents);
    const writes: MetaWrite[] = [];
    let changed = 0;
    for (let i = 0; i < ids.length; i++) {
      const documentId = ids[i]!;
      const doc = currents[i];
      const captured = this.captured.get(collectionName, documentId);
      if (captured) this.captured.delete(collectionName, documentId);
      const current = localState(doc);
      const server = versions.get(documentId) ?? null;
      // The document no longer holds the server version the capture came from: keep that version.
      if (captured && server === captured) writes.push(...this.shadowWrite(collectionName, documentId, captured));
      const entries = this.pending.forDocument(collectionName, documentId);
      // Removed here when it left the scope: not a delete of the app's.
      if (entries.length === 0 && doc?._deleted && doc._meta[LEFT_FIELD] !== undefined) continue;
      const last = entries[entries.length - 1];
      const sinceLogged = changeBetween(last ? stateOfEvent(last.event) : server, current);
      if (!sinceLogged) continue;
      const open = last && !last.sent ? last : undefined;
      const lastSent = open ? entries.findLast((entry) => entry.sent) : last;
      // The app wrote since the last logged state and ended on the version the change is based on
      // (an insert deleted again, an edit undone): still a write, and later than any the server may
      // have taken meanwhile, so it is said, or last-write-wins would lose it to an older write.
      // (From the same base as the check above, unless an unsent entry lies between: the diff once.)
      const change = (open ? changeBetween(lastSent ? stateOfEvent(lastSent.event) : server, current) : sinceLogged) ?? restatement(current);
      changed++;
      if (!change) {
        if (open) writes.push(this.pending.remove(open));
        continue;
      }
      // The clock says when the app wrote (RxDB's write time), not when the write was logged.
      const writtenAt = doc?._meta.lwt ?? Date.now();
      // One literal, not fields added to a smaller object: this runs for every document of a bulk write.
      const event: SyncEvent = {
        id: open?.event.id ?? randomId(),
        collection: collectionName,
        documentId,
        op: change.op,
        data: change.data,
        baseEventId: lastSent ? lastSent.event.id : (server?.eventId ?? null),
        hlc: this.clock.tickAt(writtenAt + this.clockOffset),
      };
      if (change.patch) event.patch = change.patch;
      if (open) writes.push(...this.pending.update(open, event));
      else writes.push(this.pending.add({ key: this.pending.nextKey(), event, sent: false }));
    }
    if (loggedThrough !== undefined) {
      this.state.logged[collectionName] = loggedThrough;
      writes.push(this.stateWrite());
    }
    if (writes.length > 0) await this.meta.write(writes);
    return changed;
  }

  /**
   * Called with every app write, as its change event arrives: when the write
   * replaced a server version the plugin had written, that version (the
   * change's base) is in the event and nowhere else.
   */
  noteLocalWrites(collectionName: string, events: readonly { documentId: string; previousDocumentData?: RxDocumentData<unknown> }[]): void {
    for (const { documentId, previousDocumentData: previous } of events) {
      if (!previous || !isSyncRevision(previous._rev)) continue;
      const stamp = stampOf(previous);
      if (stamp && !this.captured.has(collectionName, documentId)) this.captured.set(collectionName, documentId, Object.assign(stamp, { data: stripMeta(previous) }));
    }
  }

  /**
   * The app's writes in one change event bulk, to be logged by
   * recordLocalChanges with the states they left, unless the plugin writes
   * to the collection first. Only for writes made in this tab: another
   * tab's events come later than its writes, perhaps after a plugin write
   * that replaced them. This relies on a storage emitting a write's change
   * event before a later read can see the write (RxDB's memory and Dexie
   * storages do, and the wrappers over them keep the order): a plugin write
   * that replaced an app write read it first, so it comes after the app
   * write's event was noted, and moves the count.
   */
  localWrites(collectionName: string, events: LocalWrites['events']): LocalWrites {
    return { events, pluginWrites: this.pluginWritesTo(collectionName) };
  }

  /** The plugin wrote to the collection (this tab, or another whose event says so). */
  notePluginWrite(collectionName: string): void {
    this.pluginWrites.set(collectionName, this.pluginWritesTo(collectionName) + 1);
  }

  private pluginWritesTo(collectionName: string): number {
    return this.pluginWrites.get(collectionName) ?? 0;
  }

  /**
   * Logs every change the storage holds after the last logged checkpoint:
   * writes made while the plugin was not running, or lost to a crash between
   * the document write and the log append.
   */
  async recover(collectionName: string): Promise<number> {
    const collection = this.collection(collectionName);
    let recovered = 0;
    for (;;) {
      const { documents, checkpoint } = await getChangedDocumentsSince(
        collection.storageInstance,
        RECOVERY_PAGE,
        this.state.logged[collectionName] as never,
      );
      if (documents.length === 0) break;
      const primary = collection.schema.primaryPath as string;
      recovered += await this.recordLocalChanges(
        collectionName,
        documents.map((doc) => String((doc as Record<string, unknown>)[primary])),
        checkpoint,
      );
      if (documents.length < RECOVERY_PAGE) break;
    }
    if (recovered > 0) this.logger.info({ collection: collectionName, recovered }, 'logged local writes found in storage');
    return recovered;
  }

  // ---- push ----------------------------------------------------------------------

  /** The next batch to push, marked sent durably before it leaves (a sent event is never changed again). */
  async takeBatch(limit: number, maxBytes?: number): Promise<PendingEntry[]> {
    const batch = this.pending.head(limit, (entry) => this.isHeld(entry), maxBytes);
    if (this.pending.markSent(batch)) {
      this.state.sentThrough = this.pending.sentThrough;
      await this.meta.write([this.stateWrite()]);
    }
    return batch;
  }

  /**
   * Settles a pushed batch by the server's answers, one per event, in order
   * (Transport.push refuses an answer that does not match its events);
   * returns the sequences of the events acknowledged here.
   */
  /** Returns the acknowledged versions: each document's sequence, for the entries the server took. */
  async applyPushResults(batch: readonly PendingEntry[], outcomes: readonly PushOutcome[]): Promise<{ collection: string; documentId: string; seq: number }[]> {
    const writes: MetaWrite[] = [];
    const acked: [string, string, Shadow][] = [];
    let firstAcked: PendingEntry | undefined;
    // Documents with a conflicting or refused event in this batch: their later answers are not taken.
    const stopped = new DocumentMap<true>();
    const conflicts: { entry: PendingEntry; head: DocumentHead | null }[] = [];
    const rejected: { entry: PendingEntry; error: WireError }[] = [];
    batch.forEach((entry, i) => {
      const outcome = outcomes[i]!;
      const { collection, documentId } = entry.event;
      if (stopped.has(collection, documentId)) return;
      if (typeof outcome === 'number') {
        writes.push(this.pending.remove(entry));
        firstAcked ??= entry;
        const { data, op, id, hlc } = entry.event;
        acked.push([collection, documentId, { data, deleted: op === 'delete', seq: outcome, eventId: id, hlc, clientId: this.clientId }]);
        return;
      }
      stopped.set(collection, documentId, true);
      if (outcome.status === 'conflict') conflicts.push({ entry, head: outcome.head });
      else rejected.push({ entry, error: outcome.error });
    });
    if (acked.length <= SHADOWS_AT_ONCE) {
      // A few documents (an app editing one at a time): their shadows straight away, no page to fold later.
      for (const [collection, documentId, version] of acked) writes.push(...this.shadowWrite(collection, documentId, version));
    } else {
      // One page for the whole batch, named after its first acknowledged entry: that entry leaves
      // the log in this same write, so no later batch can start with it (keys are never reused).
      writes.push(this.acked.add(`acked|${firstAcked!.key}`, acked));
    }
    if (writes.length > 0) await this.meta.write(writes);
    for (const { entry, error } of rejected) await this.reject(entry, error);
    for (const { entry, head } of conflicts) {
      await this.resolveDocument(entry.event.collection, entry.event.documentId, head ? shadowFromHead(head) : null);
    }
    // Only these: an answer after a refused or conflicting event of the same document was not taken here.
    return acked.map(([collection, documentId, version]) => ({ collection, documentId, seq: version.seq }));
  }

  /** A change the server can never take (too large): set aside like a refused one. */
  rejectUnpushable(entry: PendingEntry, error: WireError): Promise<void> {
    return this.reject(entry, error);
  }

  /** The server refused the change: it is not retried, the document returns to the server's version. */
  private async reject(entry: PendingEntry, error: WireError): Promise<void> {
    const { collection: collectionName, documentId } = entry.event;
    const record: RejectedEvent = { id: entry.event.id, collection: collectionName, documentId, event: entry.event, error, rejectedAt: Date.now() };
    this.rejected.push(record);
    this.logger.warn({ collection: collectionName, documentId, code: error.code, reason: error.message }, 'server rejected a local change');
    const collection = this.collection(collectionName);
    const currents = await this.findLocal(collection, [documentId]);
    const current = currents.get(documentId);
    const server = (await this.serverVersions(collectionName, [documentId], currents)).get(documentId) ?? null;
    const revert = this.revertRow(collectionName, documentId, current, server, entry.event.data);
    if (revert) await this.writeLocal(collection, [revert]);
    await this.meta.write([
      ...this.pending.removeDocument(collectionName, documentId),
      { id: `rejected|${record.id}`, kind: 'rejected', value: record },
    ]);
    this.rejected$.next([...this.rejected]);
  }

  // ---- remote events -------------------------------------------------------------

  /**
   * Applies other clients' events. In `pull` mode every document is settled
   * (conflicts resolved) and the checkpoint advances; in `live` mode only
   * documents without local changes are applied and the rest wait for the
   * next pull, which also moves the checkpoint.
   */
  async applyRemote(
    events: readonly RemoteEvent[],
    mode: 'pull' | 'live',
    checkpoint?: { collections: readonly string[]; seq: number },
    /** Receives the sequences of events now fully applied here (nothing left for a pull to settle). */
    handled?: Set<number>,
  ): Promise<number> {
    const byCollection = new Map<string, Map<string, RemoteEvent[]>>();
    for (const event of events) {
      if (!this.db.collections[event.collection]) continue;
      const docs = byCollection.get(event.collection) ?? new Map<string, RemoteEvent[]>();
      byCollection.set(event.collection, docs);
      const list = docs.get(event.documentId);
      if (list) list.push(event);
      else docs.set(event.documentId, [event]);
    }
    let applied = 0;
    for (const [collectionName, docs] of byCollection) {
      applied += await this.applyCollection(collectionName, docs, mode, handled);
    }
    if (checkpoint) await this.moveCheckpoints(checkpoint.collections, checkpoint.seq);
    return applied;
  }

  /**
   * Documents that left this client's scope: removed here without a pending
   * event, as a remote change is written. A document with unpushed changes
   * stays until they are pushed (the engine asks again then). With
   * `outside`, only those of `documentIds` (or of the whole collection when
   * undefined) whose data does not match it. Returns how many were removed.
   */
  async leaveScope(
    collectionName: string,
    documentIds: readonly string[] | undefined,
    outside?: Scope,
    seqs?: readonly number[],
    /** Documents known to be in the scope on the server: left alone. Any other (with `outside`) leaves whatever its data. */
    confirmed?: { has(documentId: string): boolean },
  ): Promise<number> {
    const collection = this.collection(collectionName);
    if (this.leftAt.size > MAX_LEFT_REMEMBERED) this.leftAt = new DocumentMap();
    const ids = documentIds ?? (await collection.find().exec()).map((doc) => String(doc.primary));
    const unlogged = ids.filter((id) => this.pending.forDocument(collectionName, id).length === 0);
    const currents = await this.findLocal(collection, unlogged);
    const versions = await this.serverVersions(collectionName, unlogged, currents);
    const rows: LocalWrite[] = [];
    const gone = new Set<string>();
    for (const documentId of ids) {
      if (this.pending.forDocument(collectionName, documentId).length > 0) continue;
      const current = currents.get(documentId);
      if (!current || current._deleted) {
        gone.add(documentId);
        continue;
      }
      const state = localState(current)!;
      if (this.changedHere(state, versions.get(documentId))) continue;
      if (confirmed ? confirmed.has(documentId) : outside !== undefined && matchesScope(outside, state.data)) continue;
      gone.add(documentId);
      rows.push({ documentId, current, target: { data: state.data, deleted: true }, left: true });
    }
    // Remembered for what left (or was not here): an older version on its way must not bring it back.
    seqs?.forEach((seq, i) => {
      const documentId = documentIds![i]!;
      if (gone.has(documentId) && (this.leftAt.get(collectionName, documentId) ?? -1) < seq) this.leftAt.set(collectionName, documentId, seq);
    });
    if (rows.length === 0) return 0;
    const refused = await this.writeLocal(collection, rows);
    const writes = rows.filter((row) => !refused.has(row.documentId)).flatMap((row) => this.shadowDelete(collectionName, row.documentId));
    if (writes.length > 0) await this.meta.write(writes);
    return rows.length - refused.size;
  }

  /**
   * Documents said to have left this client's scope at a version (`seq`):
   * by the server, judged in the scope it held this client to, or by the
   * engine, from a version outside `scope`. Versions before that one are
   * stale from now on. Each document leaves unless it has unpushed changes
   * (it leaves once they are pushed), or this client holds a later version
   * of it, or that very version inside `scope` (the server judged it in
   * another scope, one this client held before). Returns how many left.
   */
  async leaveAt(collectionName: string, leaves: readonly { documentId: string; seq: number }[], scope: Scope): Promise<number> {
    const collection = this.collection(collectionName);
    if (this.leftAt.size > MAX_LEFT_REMEMBERED) this.leftAt = new DocumentMap();
    const latest = new Map<string, number>();
    for (const { documentId, seq } of leaves) latest.set(documentId, Math.max(seq, latest.get(documentId) ?? -1));
    const ids = [...latest.keys()];
    const currents = await this.findLocal(collection, ids);
    const versions = await this.serverVersions(collectionName, ids, currents);
    const rows: LocalWrite[] = [];
    for (const [documentId, seq] of latest) {
      if ((this.leftAt.get(collectionName, documentId) ?? -1) < seq) this.leftAt.set(collectionName, documentId, seq);
      if (this.pending.forDocument(collectionName, documentId).length > 0) continue;
      const current = currents.get(documentId);
      if (!current || current._deleted) continue;
      const known = versions.get(documentId);
      const state = localState(current)!;
      if (this.changedHere(state, known)) continue;
      if (known!.seq > seq || (known!.seq === seq && matchesScope(scope, state.data))) continue;
      rows.push({ documentId, current, target: { data: state.data, deleted: true }, left: true });
    }
    if (rows.length === 0) return 0;
    const refused = await this.writeLocal(collection, rows);
    const writes = rows.filter((row) => !refused.has(row.documentId)).flatMap((row) => this.shadowDelete(collectionName, row.documentId));
    if (writes.length > 0) await this.meta.write(writes);
    return rows.length - refused.size;
  }

  /**
   * Whether the document holds a change of the app's that is not logged yet
   * (or its server version is not known here): it does not leave before that
   * change is logged and pushed (leaveIfOutside then judges it).
   */
  private changedHere(state: DocState, known: KnownVersion | undefined): boolean {
    return !known || !hasData(known) || !statesEqual(state, known);
  }

  /** Writes the state (checkpoints, scopes) as it stands. */
  async saveState(): Promise<void> {
    await this.meta.write([this.stateWrite()]);
  }

  /** How many times the collection's scope restarted here: a page asked for before a restart is not for what is held after it. */
  scopeRestarts(collectionName: string): number {
    return this.restarts.get(collectionName) ?? 0;
  }

  /** Starts (or restarts) a move to another scope: the collection's checkpoint goes back to 0 with it, durably. */
  async restartScope(collectionName: string, scope: HeldScope): Promise<void> {
    this.restarts.set(collectionName, this.scopeRestarts(collectionName) + 1);
    this.state.scopes = { ...this.state.scopes, [collectionName]: scope };
    this.state.checkpoints[collectionName] = 0;
    await this.meta.write([this.stateWrite()]);
  }

  /** Moves the checkpoints of `collections` forward to `seq` (never back), durably. */
  async moveCheckpoints(collections: Iterable<string>, seq: number): Promise<void> {
    for (const name of collections) this.state.checkpoints[name] = Math.max(this.state.checkpoints[name] ?? 0, seq);
    await this.meta.write([this.stateWrite()]);
  }

  private async applyCollection(collectionName: string, docs: Map<string, RemoteEvent[]>, mode: 'pull' | 'live', handled?: Set<number>): Promise<number> {
    const done = (documentId: string) => {
      if (handled) for (const event of docs.get(documentId)!) handled.add(event.seq);
    };
    const collection = this.collection(collectionName);
    const ids = [...docs.keys()];
    const currents = await this.findLocal(collection, ids);
    const shadows = await this.getShadows(collectionName, ids);
    const versions = await this.serverVersions(collectionName, ids, currents, shadows);
    const writes: MetaWrite[] = [];
    const toWrite: { documentId: string; current?: RxDocumentData<unknown>; target: DocState; stamp: Shadow }[] = [];
    const toResolve: { documentId: string; remote: Shadow }[] = [];
    for (const [documentId, list] of docs) {
      const latest = list.length === 1 ? list[0]! : list.reduce((a, b) => (b.seq > a.seq ? b : a));
      const current = currents.get(documentId);
      const server = versions.get(documentId);
      const left = this.leftAt.get(collectionName, documentId);
      if ((server && server.seq >= latest.seq) || (left !== undefined && left > latest.seq)) {
        done(documentId);
        continue;
      }
      this.clock.receive(latest.hlc);
      const remote = shadowFromEvent(latest);
      // What the document holds if the app has not changed it; undefined when that is not known.
      let expected: DocState | null | undefined = server ? (hasData(server) ? server : undefined) : null;
      // Our own events coming back acknowledge a push whose answer was lost.
      const entries = this.pending.forDocument(collectionName, documentId);
      const ownIndex = entries.length === 0 ? -1 : entries.findLastIndex((entry) => list.some((event) => event.id === entry.event.id));
      if (ownIndex >= 0 && mode === 'pull') {
        for (const entry of entries.slice(0, ownIndex + 1)) writes.push(this.pending.remove(entry));
        expected = stateOfEvent(entries[ownIndex]!.event);
      }
      const hasLocalChange =
        this.pending.forDocument(collectionName, documentId).length > 0 || expected === undefined || !statesEqual(localState(current), expected);
      if (!hasLocalChange) toWrite.push({ documentId, current, target: remote, stamp: remote });
      else if (mode === 'pull') toResolve.push({ documentId, remote });
    }
    // A deletion of a document this client does not hold has no document to carry its stamp.
    const unstampable = (row: (typeof toWrite)[number]) => row.target.deleted && (!row.current || row.current._deleted);
    const refused = await this.writeLocal(collection, toWrite.filter((row) => !unstampable(row)));
    for (const row of toWrite) {
      if (refused.has(row.documentId)) {
        if (mode === 'pull') toResolve.push({ documentId: row.documentId, remote: row.stamp });
      } else {
        done(row.documentId);
        // A deletion also keeps a shadow: RxDB gives a document inserted again over a tombstone a fresh
        // _meta (and its cleanup purges tombstones), so the stamp would not survive to be its base.
        if (unstampable(row) || row.target.deleted) writes.push(...this.shadowWrite(collectionName, row.documentId, row.stamp));
        // The stamp on the document is newer now; the shadow is not needed any more.
        else if (shadows.has(row.documentId)) writes.push(...this.shadowDelete(collectionName, row.documentId));
      }
    }
    if (writes.length > 0) await this.meta.write(writes);
    for (const { documentId, remote } of toResolve) {
      await this.recordLocalChanges(collectionName, [documentId]);
      await this.resolveDocument(collectionName, documentId, remote);
    }
    return toWrite.length - refused.size + toResolve.length;
  }

  // ---- conflicts -----------------------------------------------------------------

  /**
   * Settles a document whose local change the server does not have on top of
   * `remote` (the server's head; null when the server holds no version).
   * The configured strategy decides; the result is written locally and, if it
   * differs from the server's version, pushed as a new event based on it.
   */
  async resolveDocument(collectionName: string, documentId: string, remote: Shadow | null, attempt = 0): Promise<void> {
    const collection = this.collection(collectionName);
    const entries = this.pending.forDocument(collectionName, documentId);
    const writes: MetaWrite[] = [];
    if (remote) {
      // The server's head is one of our own events (its history was compacted away): it was accepted.
      const ownIndex = entries.findIndex((entry) => entry.event.id === remote.eventId);
      if (ownIndex >= 0) {
        for (const entry of entries.slice(0, ownIndex + 1)) writes.push(this.pending.remove(entry));
        writes.push(...this.shadowWrite(collectionName, documentId, remote));
        await this.meta.write(writes);
        await this.recordLocalChanges(collectionName, [documentId]);
        return;
      }
    }
    // The app may have written again since the pushed event was logged: log that first,
    // so the local side of the conflict carries its real data and its own clock.
    await this.recordLocalChanges(collectionName, [documentId]);
    const latestEntries = this.pending.forDocument(collectionName, documentId);
    const currents = await this.findLocal(collection, [documentId]);
    const current = currents.get(documentId);
    const local = localState(current);
    const known = (await this.serverVersions(collectionName, [documentId], currents)).get(documentId);
    // A base whose content was lost to a crash is no base: the strategies then compare the two sides alone.
    const base = known && hasData(known) ? known : null;
    const lastEntry = latestEntries[latestEntries.length - 1];
    // The document's log entries give way to the server's version. Collected (and so changed in
    // memory) only once the outcome is certain: a round that the app's own write interrupts
    // leaves the log and the known server version as they were for the next round.
    const settle = () => [
      ...this.pending.removeDocument(collectionName, documentId),
      ...(remote ? this.shadowWrite(collectionName, documentId, remote) : this.shadowDelete(collectionName, documentId)),
    ];
    if (statesEqual(local, remote)) {
      writes.push(...settle());
      // The same state on both sides, but written here later than the server's version: under a
      // strategy that orders writes by clock, said again on top of it with this client's clock.
      // Dropped, it would leave the server's older clock on the document, and a write made elsewhere
      // in between (earlier, but reaching the server later) would stand over it, though this one was
      // the last. (The other strategies drop the local side here: the server's version stands as it
      // is, and a later write made on it meets no conflict of this client's making.)
      const localHlc = lastEntry?.event.hlc;
      const restate = remote && localHlc && ordersByClock(this.strategyFor(collectionName)) && compareHlc(localHlc, remote.hlc) > 0;
      const restated = restate ? restatement(local) : null;
      if (restated) writes.push(this.logNew(collectionName, documentId, restated, remote, localHlc!));
      await this.meta.write(writes);
      return;
    }
    const localVersion: DocumentVersion = {
      data: local?.data ?? lastEntry?.event.data ?? {},
      deleted: !local || local.deleted,
      hlc: lastEntry?.event.hlc ?? this.clock.tick(),
      clientId: this.clientId,
    };
    const conflict = { collection: collectionName, documentId, local: localVersion, remote: versionOf(remote), base: versionOf(base) };
    const resolution = await this.strategyFor(collectionName)(conflict);

    if (resolution.action === 'manual') {
      const stored: StoredConflict = { id: conflictId(collectionName, documentId), ...conflict, detectedAt: Date.now(), ...(resolution.reason ? { reason: resolution.reason } : {}) };
      this.conflicts.set(stored.id, stored);
      writes.push(...settle(), { id: stored.id, kind: 'conflict', value: { ...stored, remoteShadow: remote } });
      await this.meta.write(writes);
      this.logger.info({ collection: collectionName, documentId, reason: resolution.reason }, 'conflict kept for the app to resolve');
      this.conflicts$.next([...this.conflicts.values()]);
      return;
    }
    const target: DocState =
      resolution.action === 'keep-remote'
        ? (remote ?? { data: localVersion.data, deleted: true })
        : resolution.action === 'keep-local'
          ? { data: localVersion.data, deleted: localVersion.deleted }
          : resolution.action === 'write'
            ? { data: resolution.data, deleted: false }
            : { data: localVersion.data, deleted: true };
    if (!statesEqual(target, local)) {
      const refused = await this.writeLocal(collection, [{ documentId, current, target }]);
      if (refused.has(documentId)) {
        // The app wrote the document meanwhile: log that write and settle again.
        if (attempt >= MAX_RESOLVE_ATTEMPTS) throw new SyncError('INTERNAL', `document ${collectionName}/${documentId} keeps changing during conflict resolution`);
        await this.recordLocalChanges(collectionName, [documentId]);
        return this.resolveDocument(collectionName, documentId, remote, attempt + 1);
      }
    }
    writes.push(...settle());
    const change = buildChange(remote, target);
    if (change) {
      // A rebased local write keeps its own time, so it cannot beat a later write made elsewhere;
      // a merged result is as recent as the later of its two sides.
      const hlc =
        resolution.action === 'keep-local' || !remote
          ? localVersion.hlc
          : compareHlc(localVersion.hlc, remote.hlc) > 0 ? localVersion.hlc : remote.hlc;
      writes.push(this.logNew(collectionName, documentId, change, remote, hlc));
    }
    await this.meta.write(writes);
  }

  /** Logs a change the plugin made itself (a settled conflict) as a new event on `remote`. */
  private logNew(collectionName: string, documentId: string, change: Pick<SyncEvent, 'op' | 'data' | 'patch'>, remote: Shadow | null, hlc: string): MetaWrite {
    const event: SyncEvent = Object.assign({ id: randomId(), collection: collectionName, documentId }, change, { baseEventId: remote?.eventId ?? null, hlc });
    return this.pending.add({ key: this.pending.nextKey(), event, sent: false });
  }

  /** Settles a kept conflict the way the app chose. */
  async resolveConflict(id: string, choice: ConflictResolutionChoice): Promise<void> {
    const conflict = this.conflicts.get(id);
    if (!conflict) throw new SyncError('INVALID_OPTION', `no open conflict with id "${id}"`);
    const { collection: collectionName, documentId } = conflict;
    const collection = this.collection(collectionName);
    const currents = await this.findLocal(collection, [documentId]);
    const current = currents.get(documentId);
    // resolveDocument kept the server's version as a shadow when it stored the conflict.
    const remote = (await this.getShadows(collectionName, [documentId])).get(documentId) ?? null;
    const target: DocState =
      choice === 'keep-remote'
        ? (remote ?? { data: conflict.local.data, deleted: true })
        : choice === 'keep-local'
          ? (localState(current) ?? { data: conflict.local.data, deleted: true })
          : { data: choice.data, deleted: false };
    const refused = await this.writeLocal(collection, [{ documentId, current, target }]);
    if (refused.has(documentId)) throw new SyncError('INTERNAL', `document ${collectionName}/${documentId} changed while resolving its conflict; try again`);
    const writes: MetaWrite[] = [...this.pending.removeDocument(collectionName, documentId), { id, kind: 'conflict' }];
    const change = buildChange(remote, target);
    if (change) {
      // The app's decision is a new write, made now.
      writes.push(this.logNew(collectionName, documentId, change, remote, this.clock.tick()));
    }
    this.conflicts.delete(id);
    await this.meta.write(writes);
    this.conflicts$.next([...this.conflicts.values()]);
  }

  /** Drops every unpushed change and returns those documents to the server's version. */
  async clearPending(): Promise<number> {
    const entries = this.pending.all();
    const docs = new Map<string, Set<string>>();
    for (const entry of entries) {
      const set = docs.get(entry.event.collection) ?? new Set<string>();
      set.add(entry.event.documentId);
      docs.set(entry.event.collection, set);
    }
    for (const [collectionName, ids] of docs) {
      if (!this.db.collections[collectionName]) continue;
      const collection = this.collection(collectionName);
      const list = [...ids];
      const currents = await this.findLocal(collection, list);
      const versions = await this.serverVersions(collectionName, list, currents);
      await this.writeLocal(
        collection,
        list.flatMap((documentId) => this.revertRow(collectionName, documentId, currents.get(documentId), versions.get(documentId) ?? null) ?? []),
      );
    }
    await this.meta.write(this.pending.clear());
    return entries.length;
  }

  async clearRejected(): Promise<number> {
    const records = this.rejected.splice(0);
    await this.meta.write(records.map((record) => ({ id: `rejected|${record.id}`, kind: 'rejected' as const })));
    this.rejected$.next([]);
    return records.length;
  }

  /**
   * Reads the state, the log and the kept conflicts and rejections from the
   * plugin's storage; true when a state was stored. At start, and again when
   * a tab becomes the leader: the tab that led before it went on logging,
   * sending and settling after this tab first read them.
   */
  /**
   * Sets this device's clock by the server's, as its welcome gave it: a
   * device whose own clock is wrong (a dead RTC battery, a user who set the
   * year by hand) stamps its changes with a time the server accepts and
   * that orders them fairly against everyone else's. Pending changes
   * already stamped further ahead than the server takes (`maxAhead`, its
   * maxClockDrift; null when it takes any) are stamped again, in log order,
   * rather than refused: edited offline under the wrong clock, they are
   * still the user's latest edits. Returns how many were stamped again.
   */
  async correctClock(offset: number, maxAhead: number | null): Promise<number> {
    this.clockOffset = Math.abs(offset) > CLOCK_TOLERANCE_MS ? offset : 0;
    if (maxAhead === null) return 0;
    // Some room for the time between this welcome and the push.
    const limit = this.now() + maxAhead - CLOCK_TOLERANCE_MS;
    // Runs at every connection, over the whole log: no parsing unless something is ahead.
    const all = this.pending.all();
    const ahead = new Set(all.filter((entry) => millisOf(entry.event.hlc) > limit));
    if (ahead.size === 0) return 0;
    // The clock forgets what it issued under the wrong time: it starts again from the entries that stay.
    this.clock = new HybridLogicalClock(this.state.clientId, this.now);
    for (const entry of all) if (!ahead.has(entry)) this.clock.receive(entry.event.hlc);
    const writes: MetaWrite[] = [];
    // Each at its own time as the server's clock would have read it (the device's error now, taken as
    // its error then), never later than now: an edit made days ago offline does not pass for a new one.
    for (const entry of ahead) {
      const when = Math.min(millisOf(entry.event.hlc) + this.clockOffset, this.now());
      writes.push(...this.pending.update(entry, { ...entry.event, hlc: this.clock.tickAt(when) }));
    }
    await this.meta.write(writes);
    this.logger.warn({ count: ahead.size, offsetMs: offset }, "pending changes were stamped by a clock far ahead of the server's; stamped again by the server's time");
    return ahead.size;
  }

  async load(): Promise<boolean> {
    const stored = (await this.meta.getAll<PersistedState>('state')).get(STATE_ID);
    if (stored) {
      this.state.clientId = stored.clientId;
      this.state.checkpoints = stored.checkpoints;
      this.state.logged = stored.logged;
      if (stored.sentThrough === undefined) delete this.state.sentThrough;
      else this.state.sentThrough = stored.sentThrough;
      if (stored.scopes === undefined) delete this.state.scopes;
      else this.state.scopes = stored.scopes;
    }
    this.pending = new PendingLog((await this.meta.getAll<StoredPending>('pending')).values(), this.state.sentThrough);
    this.acked = new AckedVersions(await this.meta.getAll<StoredAckedPage>('acked'));
    this.clock = new HybridLogicalClock(this.state.clientId, this.now);
    for (const entry of this.pending.all()) this.clock.receive(entry.event.hlc);
    this.captured.clear();
    this.conflicts.clear();
    this.rejected.splice(0);
    await this.loadKept();
    this.conflicts$.next([...this.conflicts.values()]);
    this.rejected$.next([...this.rejected]);
    return !!stored;
  }

  async loadKept(): Promise<void> {
    for (const conflict of (await this.meta.getAll<StoredConflict>('conflict')).values()) this.conflicts.set(conflict.id, conflict);
    const rejected = await this.meta.getAll<RejectedEvent>('rejected');
    this.rejected.push(...[...rejected.values()].sort((a, b) => a.rejectedAt - b.rejectedAt));
  }

  // ---- storage helpers -----------------------------------------------------------

  /** Keeps `shadow` as the document's server version (an acknowledged one it replaces is forgotten). */
  private shadowWrite(collection: string, documentId: string, shadow: Shadow): MetaWrite[] {
    return [{ id: shadowId(collection, documentId), kind: 'shadow', value: shadow }, ...this.acked.forget(collection, documentId)];
  }

  private shadowDelete(collection: string, documentId: string): MetaWrite[] {
    return [{ id: shadowId(collection, documentId), kind: 'shadow' }, ...this.acked.forget(collection, documentId)];
  }

  /** The kept server versions of these documents: shadows, or acknowledged versions not yet folded into them. */
  async getShadows(collection: string, ids: readonly string[]): Promise<Map<string, Shadow>> {
    const stored = await this.meta.get<Shadow>(ids.map((id) => shadowId(collection, id)));
    const result = new Map<string, Shadow>();
    for (const id of ids) {
      // Most lookups find none (every new document's): then no id is built again.
      const shadow = stored.size > 0 ? stored.get(shadowId(collection, id)) : undefined;
      const acked = this.acked.get(collection, id);
      const newest = acked && (!shadow || acked.seq >= shadow.seq) ? acked : shadow;
      if (newest) result.set(id, newest);
    }
    return result;
  }

  /**
   * Folds the oldest page of acknowledged versions into per-document
   * shadows; false when there was none. Called while the client is idle, one
   * page (one push batch) at a time, so live changes are not held up.
   */
  async foldAcked(): Promise<boolean> {
    const page = this.acked.oldest();
    if (!page) return false;
    const stored = await this.meta.get<Shadow>(page.versions.map(([collection, documentId]) => shadowId(collection, documentId)), true);
    const writes: MetaWrite[] = [];
    for (const [collection, documentId, version] of page.versions) {
      const id = shadowId(collection, documentId);
      if ((stored.get(id)?.seq ?? -1) < version.seq) writes.push({ id, kind: 'shadow', value: version });
    }
    writes.push(this.acked.deletion(page.id));
    await this.meta.write(writes);
    this.acked.drop(page.id);
    return true;
  }

  private async findLocal(collection: RxCollection, ids: readonly string[]): Promise<Map<string, RxDocumentData<unknown>>> {
    const docs = await collection.storageInstance.findDocumentsById([...ids], true);
    const primary = collection.schema.primaryPath as string;
    return new Map(docs.map((doc) => [String((doc as Record<string, unknown>)[primary]), doc as RxDocumentData<unknown>]));
  }

  /**
   * The newest server version known of each document (see newestVersion);
   * `currents` by id, or at the index of each id; `shadows` when already read.
   */
  private async serverVersions(
    collectionName: string,
    ids: readonly string[],
    currents: Map<string, RxDocumentData<unknown>> | readonly (RxDocumentData<unknown> | undefined)[],
    shadows?: Map<string, Shadow>,
  ): Promise<Map<string, KnownVersion>> {
    shadows ??= await this.getShadows(collectionName, ids);
    const result = new Map<string, KnownVersion>();
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const current = currents instanceof Map ? currents.get(id) : currents[i];
      const version = newestVersion(shadows.get(id), current, this.captured.get(collectionName, id));
      if (version) result.set(id, version);
    }
    return result;
  }

  /**
   * The write that returns a document to the server's version (a refused or
   * dropped local change). Without a known server version the document is
   * deleted; when only the content of that version is unknown (lost to a
   * crash), the document is left as it is (no write at all, so it keeps its stamp).
   */
  private revertRow(
    collectionName: string,
    documentId: string,
    current: RxDocumentData<unknown> | undefined,
    server: KnownVersion | null,
    fallback: Record<string, unknown> = {},
  ): LocalWrite | undefined {
    if (!server) return { documentId, current, target: { data: localState(current)?.data ?? fallback, deleted: true } };
    if (hasData(server)) return { documentId, current, target: server, stamp: server };
    this.logger.warn({ collection: collectionName, documentId }, 'the server version of this document is not known here; it keeps its local content');
    return undefined;
  }

  /**
   * Writes remote or resolved states into the app's collection, each only if
   * the document is still what we read; returns the ids the app changed
   * meanwhile. A row with a `stamp` is exactly that server version: the
   * document gets the plugin's revision token and the stamp in `_meta`, so
   * that it needs no shadow while the app leaves it alone. Any other write
   * drops the stamp (its shadow is kept in the meta store instead).
   *
   * The writes go to the collection's own storage instance, below RxDB's
   * wrapper, because the wrapper replaces `_meta` on inserts; revision and
   * write time are set here the way the wrapper sets them.
   */
  private async writeLocal(collection: RxCollection, rows: readonly LocalWrite[]): Promise<Set<string>> {
    const primary = collection.schema.primaryPath as string;
    const time = now();
    const writeRows = rows
      .filter(({ current, target }) => !(target.deleted && (!current || current._deleted)))
      .map(({ documentId, current, target, stamp, left }) => {
        const meta: Record<string, unknown> = Object.assign({}, current?._meta, { lwt: time });
        if (stamp) meta[STAMP_FIELD] = stampValue(stamp);
        else delete meta[STAMP_FIELD];
        if (left) meta[LEFT_FIELD] = 1;
        else delete meta[LEFT_FIELD];
        const height = current ? getHeightOfRevision(current._rev) + 1 : 1;
        return {
          previous: current,
          document: withFields(target.data, {
            [primary]: documentId,
            _deleted: target.deleted,
            _attachments: current?._attachments ?? {},
            _meta: meta,
            _rev: `${height}-${stamp ? SYNC_REVISION_TOKEN : this.db.token}`,
          }) as unknown as RxDocumentData<unknown>,
        };
      });
    const refused = new Set<string>();
    if (writeRows.length === 0) return refused;
    let response;
    try {
      response = await collection.internalStorageInstance.bulkWrite(writeRows as never, REMOTE_CONTEXT);
    } finally {
      // Once it is done: an app write noted while it ran may be one this write replaced.
      this.notePluginWrite(collection.name);
    }
    for (const error of response.error) {
      if (error.status === 409) refused.add(error.documentId);
      else {
        throw new SyncError('STORAGE_ERROR', `could not write ${collection.name}/${error.documentId} locally (status ${error.status})`, {
          error: (error as { validationErrors?: unknown }).validationErrors,
        });
      }
    }
    return refused;
  }
}

/** See Replicator.localWrites. */
export interface LocalWrites {
  events: readonly { documentId: string; documentData: RxDocumentData<unknown> }[];
  /** The count of the plugin's writes to the collection when these were noted. */
  pluginWrites: number;
}

interface LocalWrite {
  documentId: string;
  current?: RxDocumentData<unknown>;
  target: DocState;
  /** The server version `target` is, when it is one. */
  stamp?: VersionInfo;
  /** The document leaves this client's scope: removed here only (see LEFT_FIELD). */
  left?: true;
}

