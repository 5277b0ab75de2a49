import { addRxPlugin, type RxDatabase, type RxPlugin } from 'rxdb';
import { RxDBLeaderElectionPlugin } from 'rxdb/plugins/leader-election';
import type { Observable } from 'rxjs';
import { SyncError } from '../shared/errors.js';
import type { ScopeSelector } from '../shared/scope.js';
import { SyncEngine, type SyncResult, type SyncStatus } from './engine.js';
import { assertSyncableDigests, fetchOnRead } from './attachment-access.js';
import type { AttachmentTransfer } from './engine/attachments.js';
import { createHandle, readOnly, type SyncHandle } from './handle.js';
import { resolveClientOptions, type ResolvedClientOptions, type SyncPluginOptions } from './options.js';
import type { PendingDocuments } from './pending-log.js';
import type { ConflictResolutionChoice, RejectedEvent, StoredConflict } from './replicator.js';

export const SYNC_PLUGIN_NAME = 'sync';

/** What `db.addPlugin(createSyncPlugin(...))` returns, and `db.plugin('sync')` later. */
export interface SyncApi extends SyncHandle {
  /** In a tab that does not lead, the leading tab's status (see SyncStatus). */
  getStatus(): SyncStatus;
  readonly status$: Observable<SyncStatus>;
  /**
   * Pushes what is pending and pulls what the server has, now. Resolves with
   * how many events moved; rejects with a SyncError (DISABLED, CLOSED,
   * NOT_CONNECTED, TIMEOUT, or what the server answered). In a tab that does
   * not lead, asks the leading tab and settles with its result.
   */
  syncNow(): Promise<SyncResult>;
  /** In a multi-instance database, for every tab, and kept across reloads. */
  enable(): void;
  disable(): void;
  /**
   * Per collection, the ids of the documents holding a change the server
   * has not acknowledged yet (sorted), e.g. to mark them unsynced. In a tab
   * that does not lead, the leading tab's, as with getStatus().
   */
  getPendingDocuments(): PendingDocuments;
  /** getPendingDocuments() each time a document joins or leaves the list. */
  readonly pendingDocuments$: Observable<PendingDocuments>;
  /** Drops unpushed changes; their documents return to the last server version. Returns how many were dropped. */
  clearPendingEvents(): Promise<number>;
  addCollection(name: string): void;
  removeCollection(name: string): void;
  getCollections(): string[];
  /**
   * Sets which documents of `collection` this device holds: a selector
   * (equality, $in, $gt/$gte/$lt/$lte over top-level fields, $and), or null
   * for all the user may read. The server may narrow it. Documents that
   * leave the scope are removed here without a pending event (unpushed
   * changes are pushed first); only documents that enter it are pulled.
   * Throws INVALID_SCOPE for a selector scopes do not support.
   */
  setScope(collection: string, selector: ScopeSelector | null): void;
  /** The scope this device asks for in `collection` (null: everything the user may read). */
  getScope(collection: string): ScopeSelector | null;
  /** Conflicts kept for the app (strategy 'manual', or a custom resolver that answered 'manual' or threw). */
  getConflicts(): StoredConflict[];
  readonly conflicts$: Observable<StoredConflict[]>;
  resolveConflict(id: string, resolution: ConflictResolutionChoice): Promise<void>;
  /** Local changes the server refused; they are not retried. */
  getRejectedEvents(): RejectedEvent[];
  /** Forgets the refused changes once the app has dealt with them; clears their status error. */
  clearRejectedEvents(): Promise<number>;
  readonly rejected$: Observable<RejectedEvent[]>;
  /** Attachment content on its way up or down, each with bytes done and total; a finished one leaves the list. */
  readonly transfers$: Observable<AttachmentTransfer[]>;
}

/** A plugin instance for one database, made by createSyncPlugin(). */
export interface SyncPluginDefinition {
  readonly name: string;
  readonly options: ResolvedClientOptions;
  attach(db: RxDatabase): Promise<SyncApi>;
}

export function createSyncPlugin(options: SyncPluginOptions): SyncPluginDefinition {
  const resolved = resolveClientOptions(options);
  return {
    name: SYNC_PLUGIN_NAME,
    options: resolved,
    async attach(db) {
      await assertSyncableDigests(db, resolved.collections);
      const engine = new SyncEngine(db, resolved);
      const engines = ENGINES.get(db) ?? new Set<SyncEngine>();
      ENGINES.set(db, engines);
      engines.add(engine);
      // Also here: attach() may be called on a database whose RxDB has not this file's plugin added.
      db.onClose.push(() => engine.close());
      await engine.start();
      for (const name of resolved.collections) fetchOnRead(db.collections[name]!, engine);
      return apiOf(engine, db);
    },
  };
}

function apiOf(engine: SyncEngine, db: RxDatabase): SyncApi {
  const status$ = engine.shown$.asObservable();
  return {
    ...createHandle(status$, engine),
    getStatus: () => engine.shown$.value,
    status$,
    async syncNow() {
      const result = await engine.syncNow();
      if (!result.success) throw result.error ?? new SyncError('INTERNAL', 'sync failed');
      return result;
    },
    enable: () => engine.enable(),
    disable: () => engine.disable(),
    getPendingDocuments: () => engine.getPendingDocuments(),
    pendingDocuments$: engine.pendingDocuments$,
    clearPendingEvents: () => engine.clearPendingEvents(),
    addCollection: (name) => {
      engine.addCollection(name);
      fetchOnRead(db.collections[name]!, engine);
    },
    removeCollection: (name) => engine.removeCollection(name),
    getCollections: () => engine.getCollections(),
    setScope: (collection, selector) => engine.setScope(collection, selector),
    getScope: (collection) => engine.getScope(collection),
    getConflicts: () => engine.getConflicts(),
    conflicts$: readOnly(engine.conflicts$),
    resolveConflict: (id, resolution) => engine.resolveConflict(id, resolution),
    getRejectedEvents: () => engine.getRejectedEvents(),
    clearRejectedEvents: () => engine.clearRejectedEvents(),
    rejected$: readOnly(engine.rejected$),
    transfers$: engine.transfers$,
  };
}

const ATTACHED = new WeakMap<RxDatabase, Map<string, SyncApi>>();
/** Each database's sync engines, stopped as soon as the database starts to close. */
const ENGINES = new WeakMap<RxDatabase, Set<SyncEngine>>();

async function addPlugin(this: RxDatabase, definition: SyncPluginDefinition): Promise<SyncApi> {
  if (!definition || typeof definition.attach !== 'function') {
    throw new SyncError('INVALID_OPTION', 'addPlugin() takes what createSyncPlugin() returns');
  }
  if (this.closed) throw new SyncError('CLOSED', `database "${this.name}" is closed`);
  const attached = ATTACHED.get(this) ?? new Map<string, SyncApi>();
  ATTACHED.set(this, attached);
  if (attached.has(definition.name)) {
    throw new SyncError('INVALID_OPTION', `a plugin named "${definition.name}" is already added to database "${this.name}"`);
  }
  const api = await definition.attach(this);
  attached.set(definition.name, api);
  return api;
}

function plugin(this: RxDatabase, name: string): SyncApi | undefined {
  return ATTACHED.get(this)?.get(name);
}

/** Add once with addRxPlugin(): gives every RxDatabase addPlugin() and plugin(). */
export const RxDBOfflineSyncPlugin: RxPlugin = {
  name: 'rxdb-offline-sync',
  rxdb: true,
  init() {
    // Only one tab of a multi-instance database syncs; RxDB's leader election picks it.
    addRxPlugin(RxDBLeaderElectionPlugin);
  },
  prototypes: {
    RxDatabase(proto: RxDatabase) {
      Object.assign(proto, { addPlugin, plugin });
    },
  },
  hooks: {
    preCloseRxDatabase: {
      // RxDB ends its change events first thing after this hook, and runs db.onClose only once its
      // queue is idle: sync that went on meanwhile wrote what no query saw, and logged no app write.
      after: (db: RxDatabase) => Promise.all([...(ENGINES.get(db) ?? [])].map((engine) => engine.close())),
    },
  },
};

declare module 'rxdb' {
  interface RxDatabaseBase<Internals, InstanceCreationOptions, Collections, Reactivity> {
    /** Attaches a plugin made by createSyncPlugin(); resolves to its API. */
    addPlugin(definition: SyncPluginDefinition): Promise<SyncApi>;
    /** The API of a plugin added earlier, by name ('sync'). */
    plugin(name: string): SyncApi | undefined;
  }
}
