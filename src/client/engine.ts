/**
 * The sync engine of one database: owns the connection, the timers, the
 * status, and the order in which replication steps run. Deciding what to do
 * with documents is the Replicator's job.
 *
 * This class is the engine's public face. Its state is one object
 * (engine/state.ts), and its steps are functions of it in `engine/`:
 * leadership (the tabs, preparing the storage), switch, logging (the app's
 * writes into the pending log), connection, live (live messages and the
 * gaps they close), schedule (runs and retries), push, pull (plain pages),
 * scoped-pull (scopes, moves and catch-ups), scope and subscription.
 */
import type { RxDatabase } from 'rxdb';
import { defer, distinctUntilChanged, map, type BehaviorSubject, type Observable, type Subject } from 'rxjs';
import type { AttachmentMeta } from '../shared/attachments.js';
import { SyncError } from '../shared/errors.js';
import { parseScope, type ScopeSelector } from '../shared/scope.js';
import { fetchAttachment, startDownloads, type AttachmentTransfer } from './engine/attachments.js';
import { goOffline } from './engine/connection.js';
import { ANOTHER_TAB, lead, openTabs, requireLeader, whenLeading } from './engine/leadership.js';
import { afterLocalChange, afterLogging, logged, watch } from './engine/logging.js';
import { requestSync } from './engine/schedule.js';
import { scopeOf } from './engine/scope.js';
import { createEngineState, requireReplicator, type EngineState } from './engine/state.js';
import { fail, readPendingDocuments, refreshCounts, standingError, updateStatus, type SyncedChange, type SyncResult, type SyncStatus } from './engine/status.js';
import { resubscribe } from './engine/subscription.js';
import { setSwitch, takeSwitch } from './engine/switch.js';
import { MetaStore } from './meta-store.js';
import type { PendingDocuments } from './pending-log.js';
import type { ResolvedClientOptions } from './options.js';
import { Replicator, type ConflictResolutionChoice, type RejectedEvent, type StoredConflict } from './replicator.js';
import { StoredSettings } from './settings.js';
import { strategyFor } from './strategies/index.js';
import type { Strategy } from './strategies/types.js';
import { LEADS_HERE } from './tabs.js';

export type { SyncedChange, SyncResult, SyncStatus };

/** How long syncNow() in a tab that does not lead waits for the leading tab to take the request. */
const LEADER_ANSWER_WAIT = 3000;

export class SyncEngine {
  readonly status$: BehaviorSubject<SyncStatus>;
  /** Server changes this tab applied (or found it already held), per live message or pull page. */
  readonly received$: Subject<SyncedChange[]>;
  /** This device's changes the server acknowledged, per push. */
  readonly sent$: Subject<SyncedChange[]>;
  private readonly state: EngineState;

  constructor(
    private readonly db: RxDatabase,
    options: ResolvedClientOptions,
  ) {
    this.state = createEngineState(db, options);
    this.status$ = this.state.status$;
    this.received$ = this.state.received$;
    this.sent$ = this.state.sent$;
    for (const name of this.state.collections) this.assertCollection(name);
  }

  get status(): SyncStatus {
    return this.status$.value;
  }

  /** What getStatus() and status$ show: this tab's own status, or in a tab that does not lead the leader's. */
  get shown$(): BehaviorSubject<SyncStatus> {
    return this.state.shown ?? this.status$;
  }

  /** The pending documents this tab shows (see SyncApi.getPendingDocuments), read from the log as a watcher subscribes. */
  get pendingDocuments$(): Observable<PendingDocuments> {
    const state = this.state;
    return defer(() => {
      readPendingDocuments(state);
      return (state.shownPending ?? state.pending$).asObservable();
    });
  }

  getPendingDocuments(): PendingDocuments {
    readPendingDocuments(this.state);
    return (this.state.shownPending ?? this.state.pending$).value;
  }

  get conflicts$(): Observable<StoredConflict[]> {
    return requireReplicator(this.state).conflicts$;
  }

  get rejected$(): Observable<RejectedEvent[]> {
    return requireReplicator(this.state).rejected$;
  }

  /** Opens the plugin's storage and, once this tab leads, starts logging and syncing. */
  async start(): Promise<void> {
    const state = this.state;
    const meta = await MetaStore.open(this.db);
    state.meta = meta;
    state.settings = new StoredSettings(meta, (error) => fail(state, error));
    // Listening before the switch is read: one set meanwhile arrives as a message.
    if (this.db.multiInstance) openTabs(state, () => this.syncNow());
    const stored = await state.settings.read();
    if (stored.syncSwitch && this.db.multiInstance) takeSwitch(state, stored.syncSwitch);
    if (stored.lastSyncTime !== null) updateStatus(state, { lastSyncTime: stored.lastSyncTime });
    // The leader keeps the time of each sync, for a reload and for the tab that leads next.
    this.status$.pipe(map((status) => status.lastSyncTime), distinctUntilChanged()).subscribe((at) => {
      if (at !== null && this.status.leader) state.settings?.noteSynced(at);
    });
    const replicator = new Replicator(this.db, meta, (name) => this.strategyFor(name), state.logger);
    state.replicator = replicator;
    state.stateStored = await replicator.load();
    replicator.attachments.wanted$.subscribe(() => startDownloads(state));
    // Downloads a restart found unfinished (their placeholders are in the collections).
    await replicator.findPlaceholders(state.collections);
    replicator.conflicts$.subscribe(() => refreshCounts(state, standingError(state) ?? undefined));
    replicator.rejected$.subscribe(() => refreshCounts(state, standingError(state) ?? undefined));
    refreshCounts(state);
    // A single tab's failure fails start(); a tab elected later has no caller to fail: it reports and tries again.
    state.ready = this.db.multiInstance ? this.db.waitForLeadership().then(() => lead(state)).catch((error: unknown) => fail(state, error)) : lead(state);
    // A single-tab database leads at once; wait so that the caller sees recovered writes counted.
    if (!this.db.multiInstance) await state.ready;
  }

  // ---- public API ----------------------------------------------------------------

  async syncNow(): Promise<SyncResult> {
    const state = this.state;
    if (state.closed) return { success: false, error: new SyncError('CLOSED', 'the database is closed'), syncedEvents: 0 };
    if (!this.status.enabled) return { success: false, error: new SyncError('DISABLED', 'sync is disabled: call enable() first'), syncedEvents: 0 };
    let notLeading = await whenLeading(state);
    // Another tab leads and syncs for the database: it is asked to, and its result is this call's.
    while (notLeading === ANOTHER_TAB) {
      // Only a multi-instance database, which has its tabs, has another tab.
      const answer = await state.tabs!.askToSync(LEADER_ANSWER_WAIT);
      if (answer !== LEADS_HERE) return answer;
      notLeading = await whenLeading(state);
    }
    if (notLeading) return { success: false, error: notLeading, syncedEvents: 0 };
    // Elected and prepared: the rest of lead() (watching, the transport) follows at once.
    if (!state.transport) await state.ready;
    const transport = state.transport;
    if (!transport) {
      // Closed meanwhile, or lead() failed after preparing (its error is in the status).
      const error = state.closed ? new SyncError('CLOSED', 'the database is closed') : (this.status.error ?? new SyncError('INTERNAL', 'this tab leads but could not start syncing'));
      return { success: false, error, syncedEvents: 0 };
    }
    transport.connect();
    // The app asked now: what is left of a reconnection's backoff is not waited out.
    transport.connectNow();
    try {
      // Every write made before the call is pushed by this run, also one of a bulk still being logged.
      await Promise.all([transport.waitForConnection(state.options.requestTimeout), logged(state)]);
    } catch (error) {
      const syncError = SyncError.from(error);
      updateStatus(state, { error: syncError });
      return { success: false, error: syncError, syncedEvents: 0 };
    }
    return requestSync(state, { push: true, pull: true });
  }

  enable(): void {
    setSwitch(this.state, true);
  }

  /** Stops all traffic: disconnects, stops timers. Local writes are still logged. */
  disable(): void {
    setSwitch(this.state, false);
  }

  async clearPendingEvents(): Promise<number> {
    await requireLeader(this.state, 'clearPendingEvents');
    // Also the writes of a bulk still being logged: every write made before the call is dropped.
    const dropped = await afterLogging(this.state, () => requireReplicator(this.state).clearPending());
    refreshCounts(this.state);
    return dropped;
  }

  getConflicts(): StoredConflict[] {
    return [...requireReplicator(this.state).conflicts.values()];
  }

  async resolveConflict(id: string, choice: ConflictResolutionChoice): Promise<void> {
    await requireLeader(this.state, 'resolveConflict');
    await this.state.queue.run(() => requireReplicator(this.state).resolveConflict(id, choice));
    refreshCounts(this.state);
    afterLocalChange(this.state);
  }

  getRejectedEvents(): RejectedEvent[] {
    return [...requireReplicator(this.state).rejected];
  }

  /** Forgets the refused changes (after the app has shown them); returns how many there were. */
  async clearRejectedEvents(): Promise<number> {
    await requireLeader(this.state, 'clearRejectedEvents');
    const count = await this.state.queue.run(() => requireReplicator(this.state).clearRejected());
    updateStatus(this.state, { error: standingError(this.state) });
    refreshCounts(this.state);
    return count;
  }

  addCollection(name: string): void {
    const state = this.state;
    this.assertCollection(name);
    if (state.collections.has(name)) return;
    state.collections.add(name);
    state.removedCollections.delete(name);
    if (this.status.leader && state.replicator) {
      void watch(state, name).catch((error: unknown) => fail(state, error));
      resubscribe(state);
      if (this.status.connected) void requestSync(state, { push: true, pull: true });
    }
  }

  removeCollection(name: string): void {
    const state = this.state;
    if (!state.collections.delete(name)) return;
    state.removedCollections.add(name);
    state.subscriptions.get(name)?.unsubscribe();
    state.subscriptions.delete(name);
    resubscribe(state);
    if (this.status.connected) void requestSync(state, { push: false, pull: true });
  }

  getCollections(): string[] {
    return [...this.state.collections];
  }

  /**
   * Changes which documents of `collection` this device holds (null: all the
   * user may read). Unpushed changes are pushed first; then documents outside
   * the new scope leave this device without a pending event, and only those
   * that came into it are pulled.
   */
  setScope(collection: string, selector: ScopeSelector | null): void {
    parseScope(selector, `setScope("${collection}")`);
    this.assertCollection(collection);
    this.state.wantScopes[collection] = selector;
    resubscribe(this.state);
    if (this.status.connected) void requestSync(this.state, { push: true, pull: true });
  }

  /** The scope this device asks for in `collection` (null: everything the user may read). */
  getScope(collection: string): ScopeSelector | null {
    return scopeOf(this.state, collection);
  }

  /** Attachment content on its way up or down, with bytes done and total. */
  get transfers$(): Observable<AttachmentTransfer[]> {
    return this.state.transfers.transfers$.asObservable();
  }

  /**
   * Downloads an attachment this device holds as a placeholder (see
   * attachment-access.ts). In a tab that does not lead, the leading tab is
   * asked to, and this resolves undefined: the document changes once the
   * content is stored.
   */
  async fetchAttachment(collection: string, documentId: string, attachmentId: string, meta: AttachmentMeta): Promise<Blob | undefined> {
    if (this.state.db.multiInstance && !this.status.leader && this.state.tabs) {
      this.state.tabs.askToFetch({ collection, documentId, attachmentId, meta });
      return undefined;
    }
    return fetchAttachment(this.state, collection, documentId, attachmentId, meta);
  }

  /** Resolves once the app's writes seen so far are in the pending log (and counted in the status). */
  whenLogged(): Promise<void> {
    return this.state.queue.idle();
  }

  /** Stops everything and closes the plugin's storage; called when the database closes. */
  async close(): Promise<void> {
    const state = this.state;
    if (state.closed) return;
    state.closed = true;
    goOffline(state);
    state.transport?.close();
    for (const subscription of state.subscriptions.values()) subscription.unsubscribe();
    state.subscriptions.clear();
    await state.running?.catch(() => undefined);
    await state.queue.idle();
    await state.tabs?.close();
    await state.settings?.flush();
    await state.meta?.close();
    this.status$.complete();
    this.received$.complete();
    this.sent$.complete();
    state.transfers.transfers$.complete();
    for (const { reject } of state.transfers.demanded.values()) reject(new SyncError('CLOSED', 'the database is closed'));
    state.shown?.complete();
    state.pending$.complete();
    state.shownPending?.complete();
  }

  // ---- helpers -------------------------------------------------------------------

  private strategyFor(collection: string): Strategy {
    let strategy = this.state.strategies.get(collection);
    if (!strategy) {
      const choice = this.state.options.conflictResolution;
      const perCollection = typeof choice === 'object' ? choice[collection] : choice;
      strategy = strategyFor(perCollection ?? 'last-write-wins');
      this.state.strategies.set(collection, strategy);
    }
    return strategy;
  }

  private assertCollection(name: string): void {
    if (!this.db.collections[name]) {
      const known = Object.keys(this.db.collections);
      throw new SyncError(
        'UNKNOWN_COLLECTION',
        `cannot sync collection "${name}": database "${this.db.name}" has ${known.length > 0 ? `only ${known.join(', ')}` : 'no collections'}; add it with addCollections() first`,
        { collection: name },
      );
    }
  }
}
