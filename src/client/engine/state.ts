/**
 * The state of one database's sync engine, in one object. Every step of the
 * engine (leadership, logging, live messages, runs, push, pull) is a
 * function of it, as the steps of RxDB's replication protocol are of theirs.
 */
import type { RxDatabase } from 'rxdb';
import { BehaviorSubject, Subject, type Subscription } from 'rxjs';
import { SyncError } from '../../shared/errors.js';
import { createLogger, type Logger } from '../../shared/logger.js';
import type { ScopeSelector } from '../../shared/scope.js';
import type { MetaStore } from '../meta-store.js';
import type { PendingDocuments } from '../pending-log.js';
import type { ResolvedClientOptions } from '../options.js';
import type { Replicator } from '../replicator.js';
import { SerialQueue } from '../serial-queue.js';
import type { StoredSettings, SyncSwitch } from '../settings.js';
import type { Strategy } from '../strategies/types.js';
import type { TabLink } from '../tabs.js';
import type { Transport } from '../transport.js';
import { createTransfers, type Transfers } from './attachments.js';
import { LIVE_PULL_DELAY } from './gaps.js';
import type { SyncedChange, SyncResult, SyncStatus } from './status.js';

/** What a sync run is asked to do; requests made while one runs are folded into the next. */
export interface SyncWant {
  push: boolean;
  pull: boolean;
}

/** The scopes the server may judge one connection's live messages in, per collection (see judgesIn). */
export interface LiveBasis {
  scopes: Map<string, Set<string>>;
  /** Subscriptions sent on the connection and not answered yet. */
  asking: number;
}

/** A scoped catch-up from nothing, while it runs (it ends, or a move or a restart drops it). */
export interface CatchUp {
  /** The documents confirmed in the scope so far, with the sequence of the version that did (see confirm). */
  readonly documents: Map<string, number>;
  /** The latest sequence as it began (its first page's `start`), which its other pages send back. */
  start?: number;
}

export interface EngineState {
  readonly db: RxDatabase;
  readonly options: ResolvedClientOptions;
  readonly logger: Logger;
  readonly queue: SerialQueue;
  readonly status$: BehaviorSubject<SyncStatus>;
  /** This tab's own pending documents (see PendingLog.documents), and the log's documentsVersion they were read at. */
  readonly pending$: BehaviorSubject<PendingDocuments>;
  /** The log pending$ was read from, and its documentsVersion then: a log read again (a tab taking the lead) counts from 0 anew. */
  pendingRead?: { log: object; version: number };
  /** Server changes this tab applied (or found it already held), per live message or pull page. */
  readonly received$: Subject<SyncedChange[]>;
  /** This device's changes the server acknowledged, per push. */
  readonly sent$: Subject<SyncedChange[]>;
  readonly collections: Set<string>;
  readonly subscriptions: Map<string, Subscription>;
  readonly strategies: Map<string, Strategy>;
  meta?: MetaStore;
  /** The switch and the last sync time, as kept in the plugin's storage. */
  settings?: StoredSettings;
  /** The latest switch this tab set or heard of (multi-instance databases only). */
  syncSwitch?: SyncSwitch;
  /** The other tabs of a multi-instance database. */
  tabs?: TabLink;
  /** What this tab shows (see SyncStatus); status$ is its own. */
  shown?: BehaviorSubject<SyncStatus>;
  /** The pending documents this tab shows: its own, or the leading tab's as it published them; pending$ is its own. */
  shownPending?: BehaviorSubject<PendingDocuments>;
  /** Whether the plugin's state document existed when this engine started. */
  stateStored: boolean;
  /**
   * Sequences of events this client holds that are not yet behind every
   * checkpoint (applied from live messages, or its own acknowledged pushes):
   * a pull names them (`have`) so the server does not send them again.
   */
  readonly heldSequences: Set<number>;
  /** The highest sequence received live on any connection: live events move the checkpoints only once they are all held through it. */
  highestLive: number;
  /** Collections removed with removeCollection(), whose live events may still arrive for a moment. */
  readonly removedCollections: Set<string>;
  /** Per collection, the last bulk of app writes still being logged in steps, or waiting for one that is (see logBulk). */
  readonly logging: Map<string, Promise<void>>;
  /** Collections with app writes noted but not logged, until recover() runs for them (see logBulk). */
  readonly unlogged: Set<string>;
  replicator?: Replicator;
  transport?: Transport;
  running?: Promise<SyncResult>;
  want: SyncWant;
  subscribed: boolean;
  /** Per collection pulled in a scope as of nothing: its catch-up under way (see CatchUp). */
  readonly confirming: Map<string, CatchUp>;
  /** Collections the server scopes for this user, though this device asked for none. */
  readonly ruledScopes: Set<string>;
  /** The scope this device asks for per collection (options.scopes, then setScope()). */
  readonly wantScopes: Record<string, ScopeSelector | null>;
  /** The scopes the server may judge this connection's live messages in; a new object per connection. */
  liveBasis: LiveBasis;
  /** Moves whenever the subscription must be made again (a disconnect, a collection added or removed): a late answer to an earlier one then counts for nothing. */
  subscriptionEpoch: number;
  retryAttempt: number;
  retryTimer?: ReturnType<typeof setTimeout>;
  /** Events per push; lowered when the server says a batch is too large. */
  pushBatchSize: number;
  /** Bytes per push: maxBatchBytes, or less when the server's welcome names a lower limit. */
  pushBatchBytes: number;
  intervalTimer?: ReturnType<typeof setInterval>;
  livePullTimer?: ReturnType<typeof setTimeout>;
  /** How long a gap after the checkpoint waits for live messages before it is pulled (see LIVE_PULL_DELAY). */
  livePullDelay: number;
  closed: boolean;
  /** Attachment content on its way up and down. */
  readonly transfers: Transfers;
  /** lead() once started: settles when this tab leads, or when leading failed. */
  ready?: Promise<void>;
}

export function newLiveBasis(): LiveBasis {
  return { scopes: new Map(), asking: 0 };
}

export function createEngineState(db: RxDatabase, options: ResolvedClientOptions): EngineState {
  return {
    db,
    options,
    logger: createLogger(options.logging, 'rxdb-offline-sync:client'),
    queue: new SerialQueue(),
    status$: new BehaviorSubject<SyncStatus>({
      enabled: true,
      connected: false,
      leader: !db.multiInstance,
      syncing: false,
      lastSyncTime: null,
      pendingEvents: 0,
      conflicts: 0,
      rejectedEvents: 0,
      error: null,
    }),
    pending$: new BehaviorSubject<PendingDocuments>({}),
    received$: new Subject<SyncedChange[]>(),
    sent$: new Subject<SyncedChange[]>(),
    collections: new Set(options.collections),
    subscriptions: new Map(),
    strategies: new Map(),
    stateStored: false,
    heldSequences: new Set(),
    highestLive: 0,
    removedCollections: new Set(),
    logging: new Map(),
    unlogged: new Set(),
    want: { push: false, pull: false },
    subscribed: false,
    confirming: new Map(),
    ruledScopes: new Set(),
    wantScopes: { ...options.scopes },
    liveBasis: newLiveBasis(),
    subscriptionEpoch: 0,
    retryAttempt: 0,
    pushBatchSize: options.batchSize,
    pushBatchBytes: options.maxBatchBytes,
    livePullDelay: LIVE_PULL_DELAY.least,
    transfers: createTransfers(),
    closed: false,
  };
}

export function requireReplicator(state: EngineState): Replicator {
  if (!state.replicator) throw new SyncError('INTERNAL', 'sync engine is not started');
  return state.replicator;
}
