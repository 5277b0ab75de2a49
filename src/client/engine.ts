/**
 * The sync engine of one database: owns the connection, the timers, the
 * status, and the order in which replication steps run. Deciding what to do
 * with documents is the Replicator's job.
 */
import type { RxChangeEventBulk, RxDatabase } from 'rxdb';
import { BehaviorSubject, Subject, combineLatest, distinctUntilChanged, map, type Observable, type Subscription } from 'rxjs';
import { backoffDelay } from '../shared/backoff.js';
import { SyncError } from '../shared/errors.js';
import { intersectScopes, matchesScope, parseScope, sameScope, scopeImplies, scopeKey, toSelector, type Scope, type ScopeSelector } from '../shared/scope.js';
import { createLogger, type Logger } from '../shared/logger.js';
import { MAX_PULL_HAVE, parseMessage, syncEventSchema, toSpans, type LiveMessage, type PullMessage, type PullReply } from '../shared/protocol/index.js';
import type { PendingEntry } from './documents.js';
import { MetaStore } from './meta-store.js';
import type { ResolvedClientOptions } from './options.js';
import {
  REMOTE_CONTEXT,
  Replicator,
  type ConflictResolutionChoice,
  type HeldScope,
  type LocalWrites,
  type RejectedEvent,
  type StoredConflict,
} from './replicator.js';
import { PAGE_SIZE } from './pending-log.js';
import { SerialQueue } from './serial-queue.js';
import { isNewerSwitch, StoredSettings, type SyncSwitch } from './settings.js';
import { strategyFor } from './strategies/index.js';
import type { Strategy } from './strategies/types.js';
import { LEADS_HERE, shownStatus, TabLink } from './tabs.js';
import { Transport, type Welcome } from './transport.js';

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

const changeOf = ({ collection, documentId, seq }: { collection: string; documentId: string; seq: number }): SyncedChange => ({ collection, documentId, seq });

export interface SyncResult {
  success: boolean;
  error: SyncError | null;
  /** Events pushed plus remote events applied in this run. */
  syncedEvents: number;
}

/**
 * After live events arrive that leave a gap after a checkpoint, a pull
 * follows this soon to close it (see moveCheckpointsThroughHeld), unless a
 * live message fills it first. Several server instances relay each other's
 * events late under load: a live event that arrives after a pull already
 * brought it, or while the pull was on its way, doubles the wait (up to the
 * most), and each gap that live
 * messages close alone shortens it by 1 %, so that gaps are waited out
 * instead of pulled twice.
 */
const LIVE_PULL_DELAY = { least: 500, most: 5000, grow: 2, shrink: 0.99 } as const;
/** How long syncNow() waits for this tab to win leadership before asking another tab, which may lead, to sync. */
const LEADERSHIP_WAIT = 3000;
const LEADERSHIP_POLL = 100;
/** How long syncNow() in a tab that does not lead waits for the leading tab to take the request. */
const LEADER_ANSWER_WAIT = 3000;
/** Said by whenLeading() when another tab of the database leads. */
const ANOTHER_TAB = 'another-tab';

/** A wait that does not keep Node running once the app is done. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => (setTimeout(resolve, ms) as { unref?: () => void }).unref?.());
}

/** Said by a push step whose batch was refused for its size: the batch size is now smaller, push again. */
const RETRY_SMALLER = -1;
/** Sequences held for `have` at most; beyond, they are dropped and a pull may send some documents again. */
const MAX_HELD_SEQUENCES = 250_000;
/** Deleted metadata documents (acknowledged events) that may pile up before they are purged from storage. */
const META_COMPACTION_THRESHOLD = 2000;

export class SyncEngine {
  readonly status$: BehaviorSubject<SyncStatus>;
  /** Server changes this tab applied (or found it already held), per live message or pull page. */
  readonly received$ = new Subject<SyncedChange[]>();
  /** This device's changes the server acknowledged, per push. */
  readonly sent$ = new Subject<SyncedChange[]>();
  private readonly logger: Logger;
  private readonly queue = new SerialQueue();
  private readonly collections: Set<string>;
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly strategies = new Map<string, Strategy>();
  private meta?: MetaStore;
  /** The switch and the last sync time, as kept in the plugin's storage. */
  private settings?: StoredSettings;
  /** The latest switch this tab set or heard of (multi-instance databases only). */
  private syncSwitch?: SyncSwitch;
  /** The other tabs of a multi-instance database. */
  private tabs?: TabLink;
  /** What this tab shows (see SyncStatus); status$ is its own. */
  private shown?: BehaviorSubject<SyncStatus>;
  /** Whether the plugin's state document existed when this engine started. */
  private stateStored = false;
  /**
   * Sequences of events this client holds that are not yet behind every
   * checkpoint (applied from live messages, or its own acknowledged pushes):
   * a pull names them (`have`) so the server does not send them again.
   */
  private readonly heldSequences = new Set<number>();
  /** The highest sequence received live on any connection: live events move the checkpoints only once they are all held through it. */
  private highestLive = 0;
  /** How `have` names those sequences; lowered when a server refuses the form (see pullPage). */
  private haveForm: 'ranges' | 'sequences' | 'none' = 'ranges';
  /** Collections removed with removeCollection(), whose live events may still arrive for a moment. */
  private readonly removedCollections = new Set<string>();
  /** Per collection, the last bulk of app writes still being logged in steps, or waiting for one that is (see logBulk). */
  private readonly logging = new Map<string, Promise<void>>();
  /** Collections with app writes noted but not logged, until recover() runs for them (see logBulk). */
  private readonly unlogged = new Set<string>();
  private replicator?: Replicator;
  private transport?: Transport;
  private running?: Promise<SyncResult>;
  private want = { push: false, pull: false };
  private subscribed = false;
  /** Per collection pulled in a scope as of nothing: the documents confirmed in it so far, with the sequence of the version that did (see confirm). */
  private readonly confirming = new Map<string, Map<string, number>>();
  /** Per collection in such a catch-up: the latest sequence as it began (its first page's `start`), which its other pages send back. */
  private readonly catchUpStart = new Map<string, number>();
  /** Collections the server scopes for this user, though this device asked for none. */
  private readonly ruledScopes = new Set<string>();
  /** The scope this device asks for per collection (options.scopes, then setScope()). */
  private readonly wantScopes: Record<string, ScopeSelector | null> = {};
  /** The scopes the server may judge this connection's live messages in, per collection (see judgesIn); a new object per connection. */
  private liveBasis = { scopes: new Map<string, Set<string>>(), asking: 0 };
  /** Moves whenever the subscription must be made again (a disconnect, a collection added or removed): a late answer to an earlier one then counts for nothing. */
  private subscriptionEpoch = 0;
  private retryAttempt = 0;
  private retryTimer?: ReturnType<typeof setTimeout>;
  /** Events per push; lowered when the server says a batch is too large. */
  private pushBatchSize: number;
  /** Bytes per push: maxBatchBytes, or less when the server's welcome names a lower limit. */
  private pushBatchBytes: number;
  private intervalTimer?: ReturnType<typeof setInterval>;
  private livePullTimer?: ReturnType<typeof setTimeout>;
  /** How long a gap after the checkpoint waits for live messages before it is pulled (see LIVE_PULL_DELAY). */
  private livePullDelay: number = LIVE_PULL_DELAY.least;
  private closed = false;
  private ready?: Promise<void>;

  constructor(
    private readonly db: RxDatabase,
    private readonly options: ResolvedClientOptions,
  ) {
    this.logger = createLogger(options.logging, 'rxdb-offline-sync:client');
    this.collections = new Set(options.collections);
    Object.assign(this.wantScopes, options.scopes);
    this.pushBatchSize = options.batchSize;
    this.pushBatchBytes = options.maxBatchBytes;
    this.status$ = new BehaviorSubject<SyncStatus>({
      enabled: true,
      connected: false,
      leader: !db.multiInstance,
      syncing: false,
      lastSyncTime: null,
      pendingEvents: 0,
      conflicts: 0,
      rejectedEvents: 0,
      error: null,
    });
    for (const name of this.collections) this.assertCollection(name);
  }

  get status(): SyncStatus {
    return this.status$.value;
  }

  /** What getStatus() and status$ show: this tab's own status, or in a tab that does not lead the leader's. */
  get shown$(): BehaviorSubject<SyncStatus> {
    return this.shown ?? this.status$;
  }

  get conflicts$(): Observable<StoredConflict[]> {
    return this.requireReplicator().conflicts$;
  }

  get rejected$(): Observable<RejectedEvent[]> {
    return this.requireReplicator().rejected$;
  }

  /** Opens the plugin's storage and, once this tab leads, starts logging and syncing. */
  async start(): Promise<void> {
    this.meta = await MetaStore.open(this.db);
    this.settings = new StoredSettings(this.meta, (error) => this.fail(error));
    // Listening before the switch is read: one set meanwhile arrives as a message.
    if (this.db.multiInstance) this.openTabs();
    const stored = await this.settings.read();
    if (stored.syncSwitch && this.db.multiInstance) this.takeSwitch(stored.syncSwitch);
    if (stored.lastSyncTime !== null) this.updateStatus({ lastSyncTime: stored.lastSyncTime });
    // The leader keeps the time of each sync, for a reload and for the tab that leads next.
    this.status$.pipe(map((status) => status.lastSyncTime), distinctUntilChanged()).subscribe((at) => {
      if (at !== null && this.status.leader) this.settings?.noteSynced(at);
    });
    // A store of an earlier release is copied by the tab that leads (see lead()); a single one leads now.
    if (!this.db.multiInstance) await this.meta.upgrade();
    this.replicator = new Replicator(this.db, this.meta, (name) => this.strategyFor(name), this.logger);
    this.stateStored = await this.replicator.load();
    this.replicator.conflicts$.subscribe(() => this.refreshCounts(this.standingError() ?? undefined));
    this.replicator.rejected$.subscribe(() => this.refreshCounts(this.standingError() ?? undefined));
    this.refreshCounts();
    // A single tab's failure fails start(); a tab elected later has no caller to fail: it reports and tries again.
    this.ready = this.db.multiInstance ? this.db.waitForLeadership().then(() => this.lead()).catch((error: unknown) => this.fail(error)) : this.lead();
    // A single-tab database leads at once; wait so that the caller sees recovered writes counted.
    if (!this.db.multiInstance) await this.ready;
  }

  /** The tabs of a multi-instance database: the leader publishes its status, the others show it. */
  private openTabs(): void {
    const tabs = new TabLink(this.db, {
      leads: () => !this.closed && this.db.leaderElector().isLeader,
      onSwitch: (value) => this.takeSwitch(value),
      sync: () => this.syncNow(),
    }, this.logger);
    const shown = new BehaviorSubject<SyncStatus>(this.status);
    this.tabs = tabs;
    this.shown = shown;
    combineLatest([this.status$, tabs.leader$]).subscribe(([own, leader]) => {
      tabs.publish(own);
      const next = shownStatus(own, leader);
      if ((Object.keys(next) as (keyof SyncStatus)[]).some((key) => next[key] !== shown.value[key])) shown.next(next);
    });
  }

  private async lead(): Promise<void> {
    if (this.closed) return;
    this.tabs?.onElected();
    if (this.db.multiInstance) await this.prepareUntilDone();
    else await this.prepare();
    if (this.closed) return;
    this.updateStatus({ leader: true });
    for (const name of this.collections) await this.watch(name);
    this.transport = new Transport(this.options, this.replicator!.clientId, {
      onConnect: (welcome) => this.onConnect(welcome),
      onDisconnect: (reason) => {
        this.resubscribe();
        this.liveBasis = { scopes: new Map(), asking: 0 };
        this.updateStatus({ connected: false });
        this.logger.info({ reason }, 'disconnected from sync server');
      },
      onConnectError: (error) => this.updateStatus({ connected: false, error }),
      onLive: (message) => this.onLive(message),
      onServerError: (error) => {
        this.logger.warn({ code: error.code, reason: error.message }, 'sync server reported an error');
        this.updateStatus({ error });
      },
    }, this.logger);
    if (this.status.enabled && this.options.autoSync) this.goOnline();
  }

  /** What the leader reads and writes of the plugin's storage before it logs and syncs. */
  private async prepare(): Promise<void> {
    const replicator = this.requireReplicator();
    // Only the leader writes the plugin's state; another tab may have led (and written) since start.
    if (this.db.multiInstance) await this.meta!.upgrade();
    const stored = this.db.multiInstance ? await replicator.load() : this.stateStored;
    if (!stored) await this.meta!.write([replicator.stateWrite()]);
    const repairs = replicator.pending.repairs();
    if (repairs.length > 0) await this.meta!.write(repairs);
    if (this.db.multiInstance) {
      // As another tab set it, and as the tab that led before synced last.
      const settings = await this.settings!.read();
      if (settings.syncSwitch) this.takeSwitch(settings.syncSwitch);
      if (settings.lastSyncTime !== null && settings.lastSyncTime > (this.status.lastSyncTime ?? 0)) this.updateStatus({ lastSyncTime: settings.lastSyncTime });
    }
  }

  /**
   * prepare() in a tab elected after start, which has no caller to fail:
   * a failure (its storage refusing a write, say) is reported in the status
   * and tried again, as a failed sync is, until it succeeds or the tab closes.
   */
  private async prepareUntilDone(): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        await this.prepare();
        if (attempt > 0) this.updateStatus({ error: this.standingError() });
        return;
      } catch (error) {
        this.fail(error);
        // close() ends the loop at its next turn.
        await sleep(this.backoff(attempt));
      }
    }
  }

  // ---- public API ----------------------------------------------------------------

  async syncNow(): Promise<SyncResult> {
    if (this.closed) return { success: false, error: new SyncError('CLOSED', 'the database is closed'), syncedEvents: 0 };
    if (!this.status.enabled) return { success: false, error: new SyncError('DISABLED', 'sync is disabled: call enable() first'), syncedEvents: 0 };
    let notLeading = await this.whenLeading();
    // Another tab leads and syncs for the database: it is asked to, and its result is this call's.
    while (notLeading === ANOTHER_TAB) {
      // Only a multi-instance database, which has its tabs, has another tab.
      const answer = await this.tabs!.askToSync(LEADER_ANSWER_WAIT);
      if (answer !== LEADS_HERE) return answer;
      notLeading = await this.whenLeading();
    }
    if (notLeading) return { success: false, error: notLeading, syncedEvents: 0 };
    // Elected and prepared: the rest of lead() (watching, the transport) follows at once.
    if (!this.transport) await this.ready;
    if (!this.transport) {
      // Closed meanwhile, or lead() failed after preparing (its error is in the status).
      const error = this.closed ? new SyncError('CLOSED', 'the database is closed') : (this.status.error ?? new SyncError('INTERNAL', 'this tab leads but could not start syncing'));
      return { success: false, error, syncedEvents: 0 };
    }
    this.transport.connect();
    // The app asked now: what is left of a reconnection's backoff is not waited out.
    this.transport.connectNow();
    try {
      // Every write made before the call is pushed by this run, also one of a bulk still being logged.
      await Promise.all([this.transport.waitForConnection(this.options.requestTimeout), this.logged()]);
    } catch (error) {
      const syncError = SyncError.from(error);
      this.updateStatus({ error: syncError });
      return { success: false, error: syncError, syncedEvents: 0 };
    }
    return this.requestSync({ push: true, pull: true });
  }

  enable(): void {
    this.setSwitch(true);
  }

  /** Stops all traffic: disconnects, stops timers. Local writes are still logged. */
  disable(): void {
    this.setSwitch(false);
  }

  /**
   * In a multi-instance database the switch is the database's: whichever
   * tab sets it, the leader obeys at once (it is sent to every tab), and a
   * reload or a tab elected later obeys it too (it is stored). A single
   * instance's switch lasts as long as the instance.
   */
  private setSwitch(enabled: boolean): void {
    const tabs = this.tabs;
    if (tabs && this.settings && !this.closed) {
      // Later than any switch this tab has seen, also within one millisecond.
      const value: SyncSwitch = { enabled, at: Math.max(Date.now(), (this.syncSwitch?.at ?? 0) + 1), by: this.db.token };
      this.syncSwitch = value;
      tabs.sendSwitch(value);
      // Sent again once stored: a tab that opened meanwhile may have read the storage before the write.
      void this.settings.saveSwitch(value).then(() => tabs.sendSwitch(value), (error: unknown) => this.fail(error));
    }
    this.applySwitch(enabled);
  }

  /** A switch another tab set, or the stored one: obeyed when it is the latest this tab knows. */
  private takeSwitch(value: SyncSwitch): void {
    if (!isNewerSwitch(this.syncSwitch, value)) return;
    this.syncSwitch = value;
    this.applySwitch(value.enabled);
  }

  private applySwitch(enabled: boolean): void {
    if (enabled) {
      if (this.status.enabled || this.closed) return;
      this.updateStatus({ enabled: true, error: this.standingError() });
      if (this.options.autoSync && this.transport) this.goOnline();
    } else {
      if (!this.status.enabled) return;
      this.updateStatus({ enabled: false });
      this.goOffline();
    }
  }

  async clearPendingEvents(): Promise<number> {
    await this.requireLeader('clearPendingEvents');
    // Also the writes of a bulk still being logged: every write made before the call is dropped.
    const dropped = await this.afterLogging(() => this.requireReplicator().clearPending());
    this.refreshCounts();
    return dropped;
  }

  getConflicts(): StoredConflict[] {
    return [...this.requireReplicator().conflicts.values()];
  }

  async resolveConflict(id: string, choice: ConflictResolutionChoice): Promise<void> {
    await this.requireLeader('resolveConflict');
    await this.queue.run(() => this.requireReplicator().resolveConflict(id, choice));
    this.refreshCounts();
    this.afterLocalChange();
  }

  getRejectedEvents(): RejectedEvent[] {
    return [...this.requireReplicator().rejected];
  }

  addCollection(name: string): void {
    this.assertCollection(name);
    if (this.collections.has(name)) return;
    this.collections.add(name);
    this.removedCollections.delete(name);
    if (this.status.leader && this.replicator) {
      void this.watch(name).catch((error: unknown) => this.fail(error));
      this.resubscribe();
      if (this.status.connected) void this.requestSync({ push: true, pull: true });
    }
  }

  removeCollection(name: string): void {
    if (!this.collections.delete(name)) return;
    this.removedCollections.add(name);
    this.subscriptions.get(name)?.unsubscribe();
    this.subscriptions.delete(name);
    this.resubscribe();
    if (this.status.connected) void this.requestSync({ push: false, pull: true });
  }

  getCollections(): string[] {
    return [...this.collections];
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
    this.wantScopes[collection] = selector;
    this.resubscribe();
    if (this.status.connected) void this.requestSync({ push: true, pull: true });
  }

  /** The scope this device asks for in `collection` (null: everything the user may read). */
  getScope(collection: string): ScopeSelector | null {
    return this.wantScopes[collection] ?? null;
  }

  /** Resolves once the app's writes seen so far are in the pending log (and counted in the status). */
  whenLogged(): Promise<void> {
    return this.queue.idle();
  }

  /** Stops everything and closes the plugin's storage; called when the database closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.goOffline();
    this.transport?.close();
    for (const subscription of this.subscriptions.values()) subscription.unsubscribe();
    this.subscriptions.clear();
    await this.running?.catch(() => undefined);
    await this.queue.idle();
    await this.tabs?.close();
    await this.settings?.flush();
    await this.meta?.close();
    this.status$.complete();
    this.received$.complete();
    this.sent$.complete();
    this.shown?.complete();
  }

  // ---- local changes -------------------------------------------------------------

  private async watch(name: string): Promise<void> {
    const replicator = this.requireReplicator();
    const collection = replicator.collection(name);
    // Subscribe before recovering, so that no write falls between the two.
    const subscription = collection.eventBulks$.subscribe((bulk: RxChangeEventBulk<unknown>) => {
      if (bulk.isLocal) return;
      if (bulk.context === REMOTE_CONTEXT) {
        replicator.notePluginWrite(name);
        return;
      }
      replicator.noteLocalWrites(name, bulk.events as never);
      const ids = bulk.events.map((event) => event.documentId);
      // This tab's writes (their revision names this database instance) are logged as their events say;
      // another tab's are read back (see localWrites).
      const ownRevision = `-${this.db.token}`;
      const written = bulk.events.every((event) => event.documentData._rev.endsWith(ownRevision))
        ? replicator.localWrites(name, bulk.events as never)
        : undefined;
      this.logBulk(name, ids, bulk.checkpoint, written, subscription);
    });
    this.subscriptions.set(name, subscription);
    await this.queue.run(() => {
      // What a cut-off bulk left is after the stored checkpoint: recovered here, checkpoints may move again.
      this.unlogged.delete(name);
      return this.unloggedIfFailed(name, () => replicator.recover(name));
    });
    this.refreshCounts();
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
  private logBulk(name: string, ids: readonly string[], checkpoint: unknown, written: LocalWrites | undefined, watching: Subscription): void {
    const replicator = this.requireReplicator();
    // The configured batch, not one lowered after a refusal: one oversized document must not leave every later bulk logged one by one.
    const size = Math.min(this.options.batchSize, PAGE_SIZE);
    const step = (start: number): Promise<void> => {
      if (this.closed || this.subscriptions.get(name) !== watching) {
        this.unlogged.add(name);
        return Promise.resolve();
      }
      const end = Math.min(start + size, ids.length);
      const last = end === ids.length;
      const whole = start === 0 && last;
      const part = written && !whole ? { ...written, events: written.events.slice(start, end) } : written;
      return this.queue
        .run(() =>
          this.unloggedIfFailed(name, () =>
            replicator.recordLocalChanges(name, whole ? ids : ids.slice(start, end), last && !this.unlogged.has(name) ? checkpoint : undefined, part),
          ),
        )
        .then(() => {
          this.afterLocalChange();
          if (!last) return step(end);
        });
    };
    const earlier = this.logging.get(name);
    if (!earlier && ids.length <= size) {
      // One step, queued at once, as the app's small writes are: several of them go out in one push.
      void step(0).catch((error: unknown) => this.fail(error));
      return;
    }
    const logged = (earlier ? earlier.then(() => step(0)) : step(0)).catch((error: unknown) => this.fail(error));
    this.logging.set(name, logged);
    void logged.then(() => {
      if (this.logging.get(name) === logged) this.logging.delete(name);
    });
  }

  /**
   * Runs a step that logs app writes; if it fails, the collection is marked
   * `unlogged`, inside the queue task, before the queue goes on to a later
   * bulk's last step (which then stores no checkpoint).
   */
  private async unloggedIfFailed(name: string, work: () => Promise<unknown>): Promise<void> {
    try {
      await work();
    } catch (error) {
      this.unlogged.add(name);
      throw error;
    }
  }

  /** Resolves once no bulk of app writes noted so far is being logged (each is logged, or was cut off). */
  private async logged(): Promise<void> {
    while (this.logging.size > 0) await Promise.all(this.logging.values());
  }

  /** Queues `task` once no bulk is being logged, in the same step as the last look: no bulk's steps fall on both sides of it. */
  private async afterLogging<T>(task: () => Promise<T>): Promise<T> {
    for (;;) {
      await this.logged();
      // A bulk may have started since logged() last looked: then it is waited for too.
      if (this.logging.size === 0) return this.queue.run(task);
    }
  }

  private afterLocalChange(): void {
    this.refreshCounts();
    if (this.status.enabled && this.options.autoSync && this.status.connected && this.options.useWebSockets) {
      void this.requestSync({ push: true, pull: false });
    }
  }

  // ---- connection ----------------------------------------------------------------

  private goOnline(): void {
    this.transport?.connect();
    clearInterval(this.intervalTimer);
    this.intervalTimer = setInterval(() => {
      if (this.status.connected) void this.requestSync({ push: true, pull: true });
    }, this.options.syncInterval);
  }

  private goOffline(): void {
    clearInterval(this.intervalTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    clearTimeout(this.livePullTimer);
    this.transport?.disconnect();
    this.updateStatus({ connected: false });
  }

  private onConnect({ limits, clockOffset }: Welcome): void {
    this.logger.info({ serverUrl: this.options.serverUrl }, 'connected to sync server');
    this.retryAttempt = 0;
    // Never a message the server would refuse for its size: its limits bound every push from here on.
    this.pushBatchSize = Math.min(this.options.batchSize, limits.maxEventsPerPush);
    this.pushBatchBytes = Math.min(this.options.maxBatchBytes, limits.maxPayloadBytes);
    this.updateStatus({ connected: true, error: this.standingError() });
    // Before anything is pushed on this connection (the queue keeps the order): a wrong device clock is set right.
    const replicator = this.requireReplicator();
    void this.queue.run(() => replicator.correctClock(clockOffset, limits.maxClockDrift)).catch((error: unknown) => this.fail(error));
    if (this.options.autoSync) void this.requestSync({ push: true, pull: true });
  }

  private onLive(message: LiveMessage): void {
    const replicator = this.requireReplicator();
    // Events for a collection removed at run time may still be on their way: they are dropped quietly.
    const received = message.events.filter((event) => !this.removedCollections.has(event.collection));
    const leaves = (message.leaves ?? []).filter((leave) => !this.removedCollections.has(leave.collection));
    const unexpected = [...received, ...leaves].find((event) => !this.collections.has(event.collection));
    if (unexpected) {
      this.updateStatus({ error: new SyncError('INVALID_MESSAGE', `server sent events for collection "${unexpected.collection}", which this client does not sync`) });
      return;
    }
    if (received.length === 0 && leaves.length === 0) return;
    // Brought already by the pull that went out when its gap was found: the next gap is waited out longer.
    if (received.some((event) => event.seq <= (replicator.state.checkpoints[event.collection] ?? 0))) this.growLivePullDelay();
    for (const event of [...received, ...leaves]) if (event.seq > this.highestLive) this.highestLive = event.seq;
    const basis = this.liveBasis;
    void this.queue
      .run(async () => {
        // Judged in turn with pulls and moves, in the scope held now: never a version outside it
        // (one sent before a scope change reached the server); such a version is a leave.
        const events: typeof received = [];
        const outside: typeof received = [];
        for (const event of received) {
          if (this.caughtUpPast(event.collection, event.seq)) continue;
          const scope = this.heldScopeOf(event.collection);
          (scope === undefined || matchesScope(scope, event.data) ? events : outside).push(event);
        }
        if (events.length > 0) {
          await replicator.applyRemote(events, 'live', undefined, this.heldSequences);
          this.received$.next(events.map(changeOf));
        }
        for (const event of events) this.confirm(event.collection, event.documentId, event.seq);
        for (const event of outside) {
          await this.holdScopeBeforeLeaving(event.collection);
          await replicator.leaveAt(event.collection, [event], this.heldScopeOf(event.collection)!);
          this.heldSequences.add(event.seq);
        }
        // Documents a change moved out of the scope the server holds this connection to.
        for (const leave of leaves) {
          if (this.caughtUpPast(leave.collection, leave.seq)) continue;
          const scope = this.heldScopeOf(leave.collection);
          // Holding everything, nothing leaves: the leave was judged in a scope this device asked for before.
          if (scope === undefined) continue;
          await this.holdScopeBeforeLeaving(leave.collection);
          await replicator.leaveAt(leave.collection, [leave], this.heldScopeOf(leave.collection)!);
          // Its sequence counts as held only when the server judged it in the scope held here; else a pull settles it.
          if (basis === this.liveBasis && this.judgesIn(leave.collection, scope)) this.heldSequences.add(leave.seq);
        }
        return this.moveCheckpointsThroughHeld();
      })
      .then((moved) => {
        clearTimeout(this.livePullTimer);
        if (moved) this.livePullDelay = Math.max(LIVE_PULL_DELAY.least, this.livePullDelay * LIVE_PULL_DELAY.shrink);
        else this.livePullTimer = setTimeout(() => void this.requestSync({ push: false, pull: true }), this.livePullDelay);
      }, (error: unknown) => this.fail(error));
  }

  /**
   * Whether the server judges this connection's live messages in `collection`
   * in `scope`: every subscription made on it has been answered, and each
   * answer (and each scoped pull's) named that scope. Live delivery reads a
   * socket's scope before it sends, so a message can be judged in the scope
   * of an earlier subscription on the same connection, even after the
   * answer to a later one.
   */
  private judgesIn(collection: string, scope: Scope): boolean {
    const seen = this.liveBasis.scopes.get(collection);
    return this.liveBasis.asking === 0 && seen !== undefined && seen.size === 1 && seen.has(scopeKey(scope));
  }

  /** Notes a scope the server may judge this connection's live messages in (a subscription's or a scoped pull's answer). */
  private noteLiveScope(basis: SyncEngine['liveBasis'], collection: string, selector: unknown): void {
    const seen = basis.scopes.get(collection) ?? new Set<string>();
    seen.add(scopeKey(parseScope(selector)));
    basis.scopes.set(collection, seen);
  }

  private growLivePullDelay(): void {
    this.livePullDelay = Math.min(LIVE_PULL_DELAY.most, this.livePullDelay * LIVE_PULL_DELAY.grow);
  }

  /**
   * When this client holds every sequence from each checkpoint through the
   * highest one received live (applied live, or its own acknowledged
   * pushes), the checkpoints move there without asking the server: a pull
   * would send nothing back and only move them the same way. Through the
   * highest ever received, not just the latest message's: live messages can
   * arrive out of sequence order, and a later one must not stand in for the
   * pull an earlier one's gap still needs. Returns false when a sequence is missing
   * (an event not sent live, one another server instance has not relayed
   * yet, or one committed out of order; or a live event left to a pull to
   * settle, for a document with a local change): then the pull that follows
   * live messages goes out as before. A burst to many readers then costs the
   * server no pull per reader, and no reader gets the end of a burst twice,
   * live and in a pull that left before its live message arrived.
   */
  private async moveCheckpointsThroughHeld(): Promise<boolean> {
    const replicator = this.requireReplicator();
    let lowest = Number.POSITIVE_INFINITY;
    let behind = false;
    for (const name of this.collections) {
      // A scoped collection pulling as of nothing, or moving to another scope, moves only with its pages.
      const held = replicator.state.scopes?.[name];
      if (held && (held.target !== undefined || held.through === 0)) return false;
      const from = replicator.state.checkpoints[name] ?? 0;
      let checkpoint = from;
      while (this.heldSequences.has(checkpoint + 1)) checkpoint++;
      if (checkpoint < this.highestLive) return false;
      lowest = Math.min(lowest, checkpoint);
      behind ||= from < checkpoint;
    }
    if (lowest === Number.POSITIVE_INFINITY) return false;
    // Written only when a checkpoint moves: a live message whose events were all held already costs no write.
    if (behind) await replicator.moveCheckpoints(this.collections, lowest);
    this.forgetHeldThrough(lowest);
    return true;
  }

  /** Sequences up to `seq` are behind every checkpoint now: a pull need not name them any more. */
  private forgetHeldThrough(seq: number): void {
    for (const held of this.heldSequences) if (held <= seq) this.heldSequences.delete(held);
  }

  // ---- sync runs -----------------------------------------------------------------

  /** Runs (or joins) a sync run; requests made while one runs are folded into the next. */
  private requestSync(want: { push: boolean; pull: boolean }): Promise<SyncResult> {
    this.want.push ||= want.push;
    this.want.pull ||= want.pull;
    if (!this.running) {
      const run: Promise<SyncResult> = this.drain().finally(() => {
        if (this.running === run) this.running = undefined;
      });
      this.running = run;
    }
    return this.running;
  }

  private wanted(): boolean {
    return this.want.push || this.want.pull;
  }

  private async drain(): Promise<SyncResult> {
    let syncedEvents = 0;
    this.updateStatus({ syncing: true });
    try {
      const replicator = this.requireReplicator();
      do {
        while (this.wanted()) {
          const want = this.want;
          this.want = { push: false, pull: false };
          syncedEvents += await this.runOnce(want);
        }
        this.retryAttempt = 0;
        // Idle: acknowledged versions become per-document shadows, one push batch at a time.
        while (!this.wanted() && (await this.queue.run(() => replicator.foldAcked())));
        if (!this.wanted() && this.meta && this.meta.deletedSinceCompaction >= META_COMPACTION_THRESHOLD) {
          const meta = this.meta;
          await this.queue.run(() => meta.compact());
        }
      } while (this.wanted());
      // The run ends here, in the same step as the last look at the requests: from now on a
      // request (say from a status$ subscriber seeing `syncing: false`) starts a run of its own.
      this.running = undefined;
      this.updateStatus({ syncing: false, lastSyncTime: Date.now(), error: this.standingError() });
      return { success: true, error: null, syncedEvents };
    } catch (error) {
      const syncError = SyncError.from(error);
      this.want = { push: false, pull: false };
      this.running = undefined;
      this.updateStatus({ syncing: false, error: syncError });
      this.logger.warn({ code: syncError.code, reason: syncError.message }, 'sync failed');
      const retryAfterMs = (syncError.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
      this.scheduleRetry(typeof retryAfterMs === 'number' ? retryAfterMs : undefined);
      return { success: false, error: syncError, syncedEvents };
    } finally {
      this.refreshCounts();
    }
  }

  private resubscribe(): void {
    this.subscribed = false;
    this.subscriptionEpoch++;
  }

  private async runOnce(want: { push: boolean; pull: boolean }): Promise<number> {
    const transport = this.transport;
    const replicator = this.requireReplicator();
    if (!transport || !this.status.enabled) throw new SyncError('DISABLED', 'sync is disabled');
    let synced = 0;
    // Not waited for before pushing and pulling: the server takes one socket's messages in order and
    // joins the rooms in the step that takes this one, before it reads anything for a pull sent behind
    // it, so no event falls between the two, and every (re)connection saves a round trip. (A server
    // that joins later, an earlier release re-subscribing or a sharded Redis adapter, can leave an
    // event to the next pull: late, never lost, since its sequence is past the checkpoint.)
    let subscribing: Promise<void> | undefined;
    if (want.pull && this.options.useWebSockets && !this.subscribed) {
      const epoch = this.subscriptionEpoch;
      const scopes = Object.fromEntries([...this.collections].filter((name) => this.getScope(name) !== null).map((name) => [name, this.getScope(name)]));
      // Unanswered, it may have been taken all the same, in a scope not known here: `asking` then stays up.
      const basis = this.liveBasis;
      basis.asking++;
      subscribing = transport.subscribe({ collections: [...this.collections], ...(Object.keys(scopes).length > 0 ? { scopes } : {}) }).then((reply) => {
        basis.asking--;
        for (const name of reply.collections) this.noteLiveScope(basis, name, reply.scopes?.[name] ?? null);
        // Not if the connection dropped or the collections changed since it was sent: then it is made again.
        if (this.subscriptionEpoch === epoch) this.subscribed = true;
      });
      // Handled from the start; its failure ends the run below, before any page is written.
      subscribing.catch(() => undefined);
    }
    // Push everything before pulling: a pull then never meets an event whose fate is unknown.
    for (;;) {
      const pushed = await this.queue.run(async () => {
        const batch = await replicator.takeBatch(this.pushBatchSize, this.pushBatchBytes);
        if (batch.length === 0) return 0;
        try {
          const outcomes = await transport.push(batch.map((entry) => entry.event));
          // This client holds what it took of the server's answer: a pull need not send that back.
          const acked = await replicator.applyPushResults(batch, outcomes);
          if (acked.length > 0) this.sent$.next(acked.map(({ collection, documentId, seq }) => ({ collection, documentId, seq })));
          for (const { collection, documentId, seq } of acked) this.confirm(collection, documentId, seq);
          for (const { seq } of acked) this.heldSequences.add(seq);
          // A conflict settled here may have taken the server's version, which may be outside the scope too.
          const settled = batch
            .filter(({ event }) => !acked.some((a) => a.collection === event.collection && a.documentId === event.documentId))
            .map(({ event }) => ({ collection: event.collection, documentId: event.documentId }));
          await this.leaveIfOutside([...acked, ...settled]);
          return batch.length;
        } catch (error) {
          return this.handleRefusedPush(SyncError.from(error), batch);
        }
      });
      if (pushed === RETRY_SMALLER) continue;
      if (pushed === 0) break;
      synced += pushed;
      this.refreshCounts();
    }
    if (!want.pull) return synced;
    const groups = new Map<number, string[]>();
    const scoped = [...this.collections].filter((name) => this.isScoped(name));
    for (const name of this.collections) {
      if (scoped.includes(name)) continue;
      const checkpoint = replicator.state.checkpoints[name] ?? 0;
      groups.set(checkpoint, [...(groups.get(checkpoint) ?? []), name]);
    }
    for (let [checkpoint, collections] of groups) {
      // A page is asked for before the step that needs it (the first before the subscription's
      // answer, each next one before the page before it is written), so its promise is handled from
      // the start: it may fail meanwhile (the connection drops) or be dropped (that step failed).
      // Its error still reaches the `await next` below.
      const ask = (from: number) => {
        const page = this.pullPage(transport, { checkpoint: from, collections, limit: this.options.pullBatchSize });
        page.catch(() => undefined);
        return page;
      };
      let next = ask(checkpoint);
      if (subscribing) {
        await subscribing;
        subscribing = undefined;
      }
      for (;;) {
        const reply = await next;
        // A page that arrived after disable() is not written: the run ends as it would have without it.
        if (!this.status.enabled) throw new SyncError('DISABLED', 'sync was disabled during the pull');
        const unexpected = reply.events.find((event) => !collections.includes(event.collection));
        if (unexpected) throw new SyncError('INVALID_MESSAGE', `server sent events for collection "${unexpected.collection}", which was not asked for`);
        if (reply.checkpoint < checkpoint) throw new SyncError('INVALID_MESSAGE', `server moved the checkpoint back from ${checkpoint} to ${reply.checkpoint}`);
        // The next page is asked for before this one is written: the round trip and the server's
        // work overlap the local write. Only the page is early; its checkpoint is kept once applied.
        if (reply.hasMore) next = ask(reply.checkpoint);
        // Events that came live while this page was on its way: the gap would have closed without it.
        if (reply.events.some((event) => this.heldSequences.has(event.seq))) this.growLivePullDelay();
        // A collection that came to hold a scope while this page was on its way (a leave arrived live)
        // pulls in it from 0 now: the page is not its, and must not move its checkpoint.
        const unscoped = await this.queue.run(async () => {
          const still = collections.filter((name) => replicator.state.scopes?.[name] === undefined);
          const events = still.length === collections.length ? reply.events : reply.events.filter((event) => still.includes(event.collection));
          synced += await replicator.applyRemote(events, 'pull', { collections: still, seq: reply.checkpoint });
          if (events.length > 0) this.received$.next(events.map(changeOf));
          return still;
        });
        checkpoint = reply.checkpoint;
        if (unscoped.length < collections.length) {
          this.want.pull = true;
          break;
        }
        // The server holds this user to a scope in these collections: they are pulled as scoped from now on.
        const ruled = Object.keys(reply.scopes ?? {}).filter((name) => collections.includes(name) && (reply.scopes![name] ?? null) !== null);
        if (ruled.length > 0) {
          for (const name of ruled) this.ruledScopes.add(name);
          this.want.pull = true;
        }
        if (!reply.hasMore) break;
      }
    }
    if (scoped.length > 0 && subscribing) {
      await subscribing;
      subscribing = undefined;
    }
    for (const name of scoped) synced += await this.pullScoped(transport, name);
    await subscribing;
    // What every checkpoint has passed needs no naming any more.
    this.forgetHeldThrough(Math.min(...[...this.collections].map((name) => replicator.state.checkpoints[name] ?? 0)));
    if (this.heldSequences.size > MAX_HELD_SEQUENCES) this.heldSequences.clear();
    return synced;
  }

  /** Whether `name` is pulled in a scope: this device asks for one, holds one, or the server set one. */
  private isScoped(name: string): boolean {
    return this.getScope(name) !== null || this.ruledScopes.has(name) || this.requireReplicator().state.scopes?.[name] !== undefined;
  }

  /**
   * Pulls one scoped collection. The server answers with the scope it
   * applies (this device's, within its rule for the user). While that is
   * the scope held here, pages bring the changes in it and the documents
   * that left it. When it is another, the move starts: documents outside
   * the new scope leave (those with unpushed changes once pushed), and the
   * collection pulls again from 0, naming what it held and when, so that
   * only the documents that came into the scope are sent.
   */
  private async pullScoped(transport: Transport, name: string): Promise<number> {
    const replicator = this.requireReplicator();
    let synced = 0;
    // A collection that held everything until now holds everything as of its checkpoint; one that
    // holds nothing yet holds its scope as of nothing, from now on (saved with its first page).
    const start = replicator.state.checkpoints[name] ?? 0;
    const unscoped: HeldScope = { held: null, through: start };
    if (start === 0 && replicator.state.scopes?.[name] === undefined) replicator.state.scopes = { ...replicator.state.scopes, [name]: { held: this.getScope(name), through: 0 } };
    for (;;) {
      const checkpoint = replicator.state.checkpoints[name] ?? 0;
      const heldScope: HeldScope = replicator.state.scopes?.[name] ?? unscoped;
      const first = (heldScope.through ?? checkpoint) === 0;
      if (first && checkpoint > 0 && !this.confirming.has(name)) {
        // Its confirmations are gone (the app restarted, or another tab led): the catch-up starts again.
        await this.queue.run(() => replicator.restartScope(name, heldScope));
        continue;
      }
      const restarts = replicator.scopeRestarts(name);
      const basis = this.liveBasis;
      // `through` stays where the last whole catch-up ended until this one ends: a document that left
      // the scope between two pages still gets its leave (see SyncStorage.getScopedChanges).
      const reply = await this.pullPage(transport, {
        checkpoint,
        collections: [name],
        limit: this.options.pullBatchSize,
        scope: { want: this.getScope(name), held: heldScope.held, through: heldScope.through ?? checkpoint, ...this.startOf(name, first && checkpoint > 0) },
        // Held as of nothing, every document is confirmed by its row: none is left out for being held already.
      }, !first);
      if (!this.status.enabled) throw new SyncError('DISABLED', 'sync was disabled during the pull');
      if (!reply.scopes || !Object.hasOwn(reply.scopes, name)) throw new SyncError('INVALID_MESSAGE', `server answered a scoped pull of "${name}" without its scope`);
      const unexpected = reply.events.find((event) => event.collection !== name);
      if (unexpected) throw new SyncError('INVALID_MESSAGE', `server sent events for collection "${unexpected.collection}", which was not asked for`);
      if (reply.checkpoint < checkpoint) throw new SyncError('INVALID_MESSAGE', `server moved the checkpoint back from ${checkpoint} to ${reply.checkpoint}`);
      const scope = parseScope(reply.scopes[name] ?? null, `the server's scope for ${name}`);
      // The server's live delivery follows the scope a scoped pull finds.
      this.noteLiveScope(basis, name, reply.scopes[name] ?? null);
      const aim = parseScope(heldScope.target !== undefined ? heldScope.target : heldScope.held);
      if (!sameScope(scope, aim)) {
        // Another scope: documents outside it leave, and the difference is pulled from 0. A move that
        // changes course holds no known scope any more: the new one is pulled whole.
        // Mid-move, what is held is the old scope within the one it was moving to, as of the same sequence.
        const restart: HeldScope =
          heldScope.target === undefined
            ? { held: heldScope.held, through: first ? 0 : checkpoint, target: toSelector(scope) }
            : { held: toSelector(intersectScopes(parseScope(heldScope.held), parseScope(heldScope.target))), through: heldScope.through ?? 0, target: toSelector(scope) };
        await this.queue.run(async () => {
          // Restarted meanwhile (a leave that came live): what is held is another state; look again.
          if (replicator.scopeRestarts(name) !== restarts) return;
          this.confirming.delete(name);
          this.catchUpStart.delete(name);
          this.logger.info({ collection: name, scope: toSelector(scope) }, 'the sync scope changed; moving to it');
          // Widened (every document held matches the new scope): nothing can leave, and nothing is read to find out.
          if (heldScope.target !== undefined || !scopeImplies(parseScope(heldScope.held), scope)) await replicator.leaveScope(name, undefined, scope);
          await replicator.restartScope(name, restart);
          // A sequence held here may be of a document that just left: named in `have`, it would not come back.
          this.heldSequences.clear();
        });
        continue;
      }
      const done = !reply.hasMore;
      // Held as of nothing (a first scoped pull, or a move that changed course): what this device has
      // outside the scope (its own writes, or what it held before) leaves once the whole scope is here.
      // Every document this catch-up brings (or a live message, or an acknowledged push, meanwhile) is
      // confirmed (see confirm), and at its end what was not confirmed leaves.
      const applied = await this.queue.run(async () => {
        // Restarted meanwhile (a leave that came live): this page answers for a state no longer held.
        if (replicator.scopeRestarts(name) !== restarts) return undefined;
        if (first && !this.confirming.has(name)) this.confirming.set(name, new Map());
        if (first && checkpoint === 0 && reply.start !== undefined) {
          this.catchUpStart.set(name, reply.start);
          // Confirmed live or by a push before the catch-up began: a page sends it again if it is in the scope.
          const confirmed = this.confirming.get(name)!;
          for (const [documentId, seq] of confirmed) if (seq <= reply.start) confirmed.delete(documentId);
        }
        for (const event of reply.events) this.confirm(name, event.documentId, event.seq, true);
        // A first page from 0 names no leaves (nothing was sent yet): a version confirmed before it that
        // it read past and did not send is no longer in the scope (sent or left later, when it moved on).
        if (first && checkpoint === 0) {
          const sent = new Set(reply.events.map((event) => event.documentId));
          const confirmed = this.confirming.get(name);
          for (const [documentId, seq] of confirmed ?? []) if (seq <= reply.checkpoint && !sent.has(documentId)) confirmed!.delete(documentId);
        }
        // Saved with the checkpoint the page moves: a move ends with its last page.
        if (done) replicator.state.scopes = { ...replicator.state.scopes, [name]: { held: toSelector(scope), through: reply.checkpoint } };
        const written = await replicator.applyRemote(reply.events, 'pull', { collections: [name], seq: reply.checkpoint });
        if (reply.events.length > 0) this.received$.next(reply.events.map(changeOf));
        const leaving = (reply.leaves ?? []).map(([documentId, seq]) => ({ documentId, seq }));
        let left = leaving.length > 0 ? await replicator.leaveAt(name, leaving, scope) : 0;
        if (done && first) {
          const confirmed = this.confirming.get(name) ?? new Map<string, number>();
          this.confirming.delete(name);
          this.catchUpStart.delete(name);
          left += await replicator.leaveScope(name, undefined, scope, undefined, confirmed);
        }
        return written + left;
      });
      if (applied === undefined) continue;
      synced += applied;
      for (const [, seq] of reply.leaves ?? []) this.heldSequences.add(seq);
      if (done) return synced;
    }
  }

  /**
   * A pushed change that took a document out of this device's scope (a
   * todo given to another crew, say): once nothing of it waits to be
   * pushed, it leaves this device.
   */
  private async leaveIfOutside(pushed: readonly { collection: string; documentId: string; seq?: number }[]): Promise<void> {
    const byCollection = new Map<string, { ids: string[]; seqs: number[] }>();
    for (const { collection, documentId, seq } of pushed) {
      if (this.heldScopeOf(collection) === undefined) continue;
      const group = byCollection.get(collection) ?? { ids: [], seqs: [] };
      group.ids.push(documentId);
      // Unknown (a settled conflict): nothing is remembered against a late older version.
      group.seqs.push(seq ?? -1);
      byCollection.set(collection, group);
    }
    for (const [collection, { ids, seqs }] of byCollection) {
      const scope = this.heldScopeOf(collection)!;
      await this.holdScopeBeforeLeaving(collection);
      await this.requireReplicator().leaveScope(collection, ids, scope, seqs);
    }
  }

  /**
   * Before a document leaves a collection that has held no scope yet (its
   * first scoped pull has not ended): it holds one from now on, as of
   * nothing, so that it stays on scoped pulls, and the first brings the
   * whole scope. Else, asked for everything again, a plain pull from a
   * checkpoint the leave moved past would never bring the document back.
   */
  private async holdScopeBeforeLeaving(name: string): Promise<void> {
    const replicator = this.requireReplicator();
    if (replicator.state.scopes?.[name] !== undefined) return;
    // As of nothing, from checkpoint 0: the server then sends the whole scope, and what is not in it leaves.
    // (Confirmations made so far stay: the scope aimed at is the same.)
    await replicator.restartScope(name, { held: this.getScope(name), through: 0 });
    this.heldSequences.clear();
  }

  /**
   * Whether a scoped collection has caught up past `seq` (its checkpoint, or
   * during a move the sequence its held scope is as of): a live message about
   * it that arrives now is late, and the pages that passed it told what
   * became of the document since. Applied, an in-scope version would stay
   * where the pages found the document out of the scope.
   */
  private caughtUpPast(name: string, seq: number): boolean {
    const replicator = this.requireReplicator();
    const held = replicator.state.scopes?.[name];
    return held !== undefined && seq <= Math.max(replicator.state.checkpoints[name] ?? 0, held.through ?? 0);
  }

  /** Whether `name` holds its scope as of nothing: its catch-up confirms each document it keeps (see pullScoped). */
  private pullsAsOfNothing(name: string): boolean {
    const replicator = this.requireReplicator();
    const checkpoint = replicator.state.checkpoints[name] ?? 0;
    const held = replicator.state.scopes?.[name];
    return held ? (held.through ?? checkpoint) === 0 : checkpoint === 0 && this.isScoped(name);
  }

  /**
   * A server version of `documentId` in the scope aimed at is held here now
   * (from a page, a live message or an acknowledged push): while the
   * collection holds its scope as of nothing, that confirms the document,
   * which the end of the catch-up keeps.
   */
  private confirm(name: string, documentId: string, seq: number, byPage = false): void {
    if (!this.collections.has(name) || !this.pullsAsOfNothing(name)) return;
    // A version from before the catch-up began, not sent by one of its pages: a later version at or before
    // that start (out of the scope) would be no leave, so only a page confirms it (see ScopedQuery.start).
    if (!byPage && seq <= (this.catchUpStart.get(name) ?? 0)) return;
    // Past 0 without them, the confirmations of its pages are gone: the catch-up starts again (see pullScoped).
    const confirmed = this.confirming.get(name) ?? ((this.requireReplicator().state.checkpoints[name] ?? 0) === 0 ? new Map<string, number>() : undefined);
    if (!confirmed) return;
    confirmed.set(documentId, Math.max(seq, confirmed.get(documentId) ?? 0));
    this.confirming.set(name, confirmed);
  }

  /** `start` for a scoped pull's message: the catch-up's, on every page after its first. */
  private startOf(name: string, later: boolean): { start?: number } {
    const start = this.catchUpStart.get(name);
    return later && start !== undefined && this.confirming.has(name) ? { start } : {};
  }

  /** The scope this collection's documents are held to here (during a move, the one it moves to). */
  private heldScopeOf(name: string): Scope | undefined {
    const held = this.requireReplicator().state.scopes?.[name];
    if (!held) return this.getScope(name) === null ? undefined : parseScope(this.getScope(name));
    return parseScope(held.target !== undefined ? held.target : held.held);
  }

  /**
   * One pull page, naming the sequences after the checkpoint this client
   * holds. `have` only saves traffic: a server that refuses the form it is
   * named in (an earlier release took single sequences only, not ranges) is
   * asked again in the simpler form, and from then on only in that form.
   */
  private async pullPage(transport: Transport, ask: PullMessage, nameHeld = true): Promise<PullReply> {
    for (;;) {
      const held = nameHeld ? [...this.heldSequences].filter((seq) => seq > ask.checkpoint) : [];
      const have = this.haveForm === 'none' ? [] : (this.haveForm === 'ranges' ? toSpans(held) : held.sort((a, b) => a - b)).slice(0, MAX_PULL_HAVE);
      try {
        return await transport.pull(have.length > 0 ? { ...ask, have } : ask);
      } catch (error) {
        const refused = SyncError.from(error);
        const issues = (refused.details as { issues?: { path?: unknown }[] } | undefined)?.issues;
        const aboutHave = Array.isArray(issues)
          ? issues.some((issue) => typeof issue?.path === 'string' && issue.path.startsWith('have'))
          : refused.message.includes('have');
        if (have.length === 0 || refused.code !== 'INVALID_MESSAGE' || !refused.fromPeer || !aboutHave) throw error;
        this.haveForm = this.haveForm === 'ranges' ? 'sequences' : 'none';
        this.logger.warn({ reason: refused.message, form: this.haveForm }, 'the server refused how a pull named the sequences it holds; naming them in a simpler form from now on');
      }
    }
  }

  /**
   * The server refused a whole push. For its size: push smaller batches from
   * now on, and set aside an event too large to be pushed at all. As
   * malformed: set aside the events that can never be taken. Returns how many
   * events were dealt with, or RETRY_SMALLER; other errors are thrown on (and
   * the push is retried later).
   */
  private async handleRefusedPush(error: SyncError, batch: readonly PendingEntry[]): Promise<number> {
    const limit = (error.details as { limit?: unknown } | undefined)?.limit;
    if (error.code === 'TOO_MANY_EVENTS' && typeof limit === 'number' && limit >= 1 && limit < batch.length) {
      this.pushBatchSize = limit;
      this.logger.info({ batchSize: limit }, 'server takes fewer events per push; pushing smaller batches');
      return RETRY_SMALLER;
    }
    if (error.code === 'PAYLOAD_TOO_LARGE') {
      if (batch.length > 1) {
        this.pushBatchSize = Math.max(1, Math.floor(batch.length / 2));
        return RETRY_SMALLER;
      }
      // One document larger than the server accepts: it can never be pushed.
      await this.requireReplicator().rejectUnpushable(batch[0]!, error.toWire());
      return 1;
    }
    if (error.code === 'INVALID_MESSAGE' && error.fromPeer) {
      // The server refused the whole push as malformed. Events this client's own protocol check
      // refuses, and events the server's answer names (`events.<i>…`), can never be pushed: they are
      // set aside, so that one bad event does not hold back everything logged after it. A refusal
      // that names no event is retried like any other failure: it says nothing about the events.
      const named = new Set<number>();
      for (const issue of (error.details as { issues?: { path?: unknown }[] } | undefined)?.issues ?? []) {
        const match = typeof issue.path === 'string' ? /^events\.(\d+)(\.|$)/.exec(issue.path) : null;
        if (match && Number(match[1]) < batch.length) named.add(Number(match[1]));
      }
      const unpushable = batch.flatMap((entry, index) => {
        try {
          parseMessage(syncEventSchema, entry.event, 'change (the server cannot take it)');
        } catch (invalid) {
          return [{ entry, error: SyncError.from(invalid).toWire() }];
        }
        return named.has(index) ? [{ entry, error: error.toWire() }] : [];
      });
      if (unpushable.length === 0) throw error;
      const replicator = this.requireReplicator();
      for (const { entry, error: reason } of unpushable) await replicator.rejectUnpushable(entry, reason);
      return unpushable.length;
    }
    throw error;
  }

  private scheduleRetry(retryAfterMs?: number): void {
    const { maxRetries } = this.options.retry;
    // A retry already scheduled stands: a burst of failing runs must not use up the budget at once.
    if (this.retryTimer !== undefined) return;
    if (this.retryAttempt >= maxRetries || !this.status.enabled || !this.status.connected || this.closed) return;
    const backoff = this.backoff(this.retryAttempt);
    this.retryAttempt++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.requestSync({ push: true, pull: true });
    }, Math.max(backoff, retryAfterMs ?? 0));
  }

  /** The wait before retry number `attempt` (from 0): the transport's reconnection backoff, with the same options. */
  private backoff(attempt: number): number {
    const { retryDelay, maxDelay, useExponentialBackoff } = this.options.retry;
    return backoffDelay(attempt, { base: retryDelay, max: maxDelay, exponential: useExponentialBackoff });
  }

  // ---- helpers -------------------------------------------------------------------

  private strategyFor(collection: string): Strategy {
    let strategy = this.strategies.get(collection);
    if (!strategy) {
      const choice = this.options.conflictResolution;
      const perCollection = typeof choice === 'object' ? (choice as Record<string, never>)[collection] : choice;
      strategy = strategyFor(perCollection ?? 'last-write-wins');
      this.strategies.set(collection, strategy);
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

  /**
   * An error that outlives a successful sync: a conflict a custom resolver
   * could not settle, or a change the server refused, until the app clears it.
   */
  private standingError(): SyncError | null {
    const replicator = this.replicator;
    if (!replicator) return null;
    const failed = [...replicator.conflicts.values()].find((conflict) => conflict.reason);
    if (failed) return new SyncError('CONFLICT_RESOLVER_FAILED', `${failed.collection}/${failed.documentId}: ${failed.reason}`);
    const rejected = replicator.rejected[replicator.rejected.length - 1];
    if (rejected) return new SyncError(rejected.error.code, `${rejected.collection}/${rejected.documentId} was refused by the server: ${rejected.error.message}`, rejected.error.details);
    return null;
  }

  /** Forgets the refused changes (after the app has shown them); returns how many there were. */
  async clearRejectedEvents(): Promise<number> {
    await this.requireLeader('clearRejectedEvents');
    const count = await this.queue.run(() => this.requireReplicator().clearRejected());
    this.updateStatus({ error: this.standingError() });
    this.refreshCounts();
    return count;
  }

  /**
   * Undefined once this tab leads and has prepared its storage; ANOTHER_TAB
   * when another tab leads; otherwise why not. A tab still being elected is
   * waited for (LEADERSHIP_WAIT at most), and so is the elected tab while it
   * prepares (a first copy of an earlier release's store takes a while),
   * unless it has reported that preparing failed.
   */
  private async whenLeading(): Promise<SyncError | typeof ANOTHER_TAB | undefined> {
    const elector = this.db.multiInstance ? this.db.leaderElector() : undefined;
    for (let waited = 0; !this.status.leader; waited += LEADERSHIP_POLL) {
      if (this.closed) return new SyncError('CLOSED', 'the database is closed');
      if (elector?.isLeader) {
        if (this.status.error) return this.status.error;
      } else if (waited >= LEADERSHIP_WAIT || (elector && (await elector.hasLeader()))) {
        return ANOTHER_TAB;
      }
      await Promise.race([this.ready, sleep(LEADERSHIP_POLL)]);
    }
    return undefined;
  }

  /**
   * The calls that change the plugin's log run in the leading tab only: the
   * leader keeps the log in memory and writes it over, so another tab's
   * changes to it would be lost or would clobber the leader's.
   */
  private async requireLeader(action: string): Promise<void> {
    const notLeading = await this.whenLeading();
    if (notLeading === ANOTHER_TAB) {
      throw new SyncError('DISABLED', `${action}() changes the sync log, which only the leading tab keeps: another tab of this database leads; call it there (getStatus().leader)`);
    }
    if (notLeading) throw notLeading;
  }

  private requireReplicator(): Replicator {
    if (!this.replicator) throw new SyncError('INTERNAL', 'sync engine is not started');
    return this.replicator;
  }

  private fail(error: unknown): void {
    if (this.closed) return;
    const syncError = SyncError.from(error);
    this.logger.error({ err: error }, 'sync step failed');
    this.updateStatus({ error: syncError });
  }

  private refreshCounts(error?: SyncError): void {
    if (!this.replicator || this.status$.closed) return;
    this.updateStatus({
      pendingEvents: this.replicator.pending.size,
      conflicts: this.replicator.conflicts.size,
      rejectedEvents: this.replicator.rejected.length,
      ...(error ? { error } : {}),
    });
  }

  private updateStatus(patch: Partial<SyncStatus>): void {
    if (this.status$.closed) return;
    const next = { ...this.status$.value, ...patch };
    const changed = (Object.keys(patch) as (keyof SyncStatus)[]).some((key) => next[key] !== this.status$.value[key]);
    if (changed) this.status$.next(next);
  }
}

