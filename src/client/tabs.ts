/**
 * The tabs of one multi-instance database share one sync: the tab RxDB
 * elects leader syncs, every other tab shows the leader's status, and any
 * tab may flip the switch or ask for a sync. They talk over the broadcast
 * channel RxDB keeps for the database (its leader election and its
 * storages' change events use the same one): a native BroadcastChannel, or
 * the fallback RxDB picked where there is none, and one channel per
 * database instance, so that tabs simulated in one process talk as real
 * ones do. Nothing here lasts: what must outlive a tab (the switch, the last
 * sync time) is in the plugin's storage (settings.ts).
 */
import { getBroadcastChannelReference, removeBroadcastChannelReference, type RxDatabase } from 'rxdb';
import { BehaviorSubject } from 'rxjs';
import { SyncError, type WireError } from '../shared/errors.js';
import { randomId } from '../shared/ids.js';
import type { Logger } from '../shared/logger.js';
import type { SyncResult, SyncStatus } from './engine.js';
import type { SyncSwitch } from './settings.js';
import type { PendingDocuments } from './pending-log.js';

/** Marks this plugin's messages on RxDB's channel, and their layout: a tab of another release ignores them. */
const SOURCE = 'rxdb-offline-sync/tabs@1';
/** How long a request waits for the next leader after the one that took it closed. */
const ELECTION_WAIT_MS = 20_000;

type TabError = WireError & { fromPeer: boolean };
type TabStatus = Omit<SyncStatus, 'error'> & { error: TabError | null };
type TabResult = Omit<SyncResult, 'error'> & { error: TabError | null };

type Message = { source: typeof SOURCE; from: string } & (
  /** A tab that opened asks the leader for its status. */
  | { kind: 'hello' }
  /** The leader's status and pending documents; `since`: when it began to lead, so that a later leader's status wins. */
  | { kind: 'status'; since: number; status: TabStatus; pending?: PendingDocuments }
  /** The leader closes. */
  | { kind: 'gone' }
  | { kind: 'switch'; value: SyncSwitch }
  /** A tab asks the leader to sync; the leader says it took the request, then answers with the result. */
  | { kind: 'sync'; id: string }
  | { kind: 'taken'; to: string; id: string }
  | { kind: 'synced'; to: string; id: string; result: TabResult }
  /** A tab asks the leader to download an attachment's content (getData() of a placeholder); the document's change tells it when. */
  | { kind: 'fetch'; request: FetchRequest }
);

/** An attachment whose content a tab that does not lead wants. */
export interface FetchRequest {
  collection: string;
  documentId: string;
  attachmentId: string;
  meta: { digest: string; length: number; type: string };
}
type Outgoing = Message extends infer M ? (M extends Message ? Omit<M, 'source' | 'from'> : never) : never;

/** The part of RxDB's channel (the `broadcast-channel` package) used here. */
interface Channel {
  readonly isClosed: boolean;
  postMessage(message: Message): Promise<void>;
  addEventListener(type: 'message', listener: (message: unknown) => void): void;
  removeEventListener(type: 'message', listener: (message: unknown) => void): void;
}

/** The status the leading tab published last. */
export interface LeaderStatus {
  from: string;
  since: number;
  status: SyncStatus;
  pending: PendingDocuments;
}

/** What a tab shows: its own status where it leads, or while no other tab is known to lead; else the leader's, with its own switch. */
export function shownStatus(own: SyncStatus, leader: LeaderStatus | null): SyncStatus {
  if (own.leader || !leader) return own;
  return { ...leader.status, leader: false, enabled: own.enabled };
}

/** The pending documents a tab shows: as its status (see shownStatus), its own or the leader's. */
export function shownPending(own: SyncStatus, ownPending: PendingDocuments, leader: LeaderStatus | null): PendingDocuments {
  return own.leader || !leader ? ownPending : leader.pending;
}

/** What the engine of this tab does for the others. */
export interface TabHooks {
  /** Whether this tab is the elected leader: then it takes the others' requests. */
  leads(): boolean;
  /** A switch set in another tab. */
  onSwitch(value: SyncSwitch): void;
  /** Runs a sync another tab asked for. */
  sync(): Promise<SyncResult>;
  /** Downloads an attachment another tab asked for. */
  fetch(request: FetchRequest): void;
}

/** What asking the leader to sync ends with: its result, or this tab was elected meanwhile and syncs itself. */
export const LEADS_HERE = 'leads-here';

interface Ask {
  id: string;
  resolve(answer: SyncResult | typeof LEADS_HERE): void;
  takenBy?: string;
  timer?: ReturnType<typeof setTimeout>;
  wait: number;
}

export class TabLink {
  /** The status of the tab that leads, as it published it last; null while no other tab is known to lead. */
  readonly leader$ = new BehaviorSubject<LeaderStatus | null>(null);
  private readonly channel: Channel;
  private readonly listener = (message: unknown) => this.receive(message);
  private readonly asks = new Map<string, Ask>();
  /** Set once this tab is elected: another tab's status is then a dying leader's. */
  private elected = false;
  /** When this tab began to publish its status as the leader. */
  private since?: number;
  private latest?: SyncStatus;
  private latestPending: PendingDocuments = {};
  private publishing = false;
  private closed = false;

  constructor(
    private readonly db: RxDatabase,
    private readonly hooks: TabHooks,
    private readonly logger: Logger,
  ) {
    this.channel = getBroadcastChannelReference(db.storage.name, db.token, db.name, this) as unknown as Channel;
    this.channel.addEventListener('message', this.listener);
    this.post({ kind: 'hello' });
  }

  /** This tab's own status and pending documents: sent to the others (once per turn of the event loop) while it leads. */
  publish(status: SyncStatus, pending: PendingDocuments): void {
    if (!status.leader || this.closed) return;
    this.since ??= Date.now();
    this.latest = status;
    this.latestPending = pending;
    if (this.publishing) return;
    this.publishing = true;
    queueMicrotask(() => {
      this.publishing = false;
      this.postStatus();
    });
  }

  /** This tab won the election: what another tab says it leads with is stale now, and what this tab asked of it, this tab does. */
  onElected(): void {
    this.elected = true;
    this.leader$.next(null);
    for (const ask of [...this.asks.values()]) this.finish(ask, LEADS_HERE);
  }

  sendSwitch(value: SyncSwitch): void {
    this.post({ kind: 'switch', value });
  }

  /**
   * Asks the leading tab to sync and resolves with its result. A tab that
   * says it took the request is waited for; when none does within `wait`
   * ms, it fails with TIMEOUT. When another tab takes over the lead, it is
   * asked again.
   */
  askToSync(wait: number): Promise<SyncResult | typeof LEADS_HERE> {
    if (this.closed) return Promise.resolve(failure(new SyncError('CLOSED', 'the database is closed')));
    if (this.elected) return Promise.resolve(LEADS_HERE);
    return new Promise((resolve) => {
      const ask: Ask = { id: randomId(), resolve, wait };
      this.asks.set(ask.id, ask);
      this.sendAsk(ask);
    });
  }

  /** Asks the leading tab to download an attachment; no answer: the document changes when its content is stored. */
  askToFetch(request: FetchRequest): void {
    void this.post({ kind: 'fetch', request });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const led = this.since !== undefined;
    // A last status first, then goodbye: the others stop showing this tab's.
    if (led) this.postStatus();
    if (led) await this.post({ kind: 'gone' });
    this.closed = true;
    for (const ask of [...this.asks.values()]) this.finish(ask, failure(new SyncError('CLOSED', 'the database is closed')));
    this.channel.removeEventListener('message', this.listener);
    this.leader$.complete();
    await removeBroadcastChannelReference(this.db.token, this);
  }

  private postStatus(): void {
    if (this.latest && this.since !== undefined) this.post({ kind: 'status', since: this.since, status: toTabStatus(this.latest), pending: this.latestPending });
  }

  private sendAsk(ask: Ask, wait = ask.wait): void {
    ask.takenBy = undefined;
    clearTimeout(ask.timer);
    ask.timer = setTimeout(() => {
      const error = new SyncError(
        'TIMEOUT',
        `no tab of this database took the sync within ${wait} ms: another tab leads but does not answer (it runs another release of this plugin, or none, or is frozen); syncNow() in that tab syncs`,
      );
      this.finish(ask, failure(error));
    }, wait);
    (ask.timer as { unref?: () => void }).unref?.();
    this.post({ kind: 'sync', id: ask.id });
  }

  private finish(ask: Ask, answer: SyncResult | typeof LEADS_HERE): void {
    clearTimeout(ask.timer);
    if (this.asks.delete(ask.id)) ask.resolve(answer);
  }

  private receive(raw: unknown): void {
    if (this.closed || !isMessage(raw) || raw.from === this.db.token) return;
    const message = raw;
    switch (message.kind) {
      case 'hello':
        this.postStatus();
        return;
      case 'status': {
        if (this.elected) return;
        const current = this.leader$.value;
        // A dying leader's last words may arrive after its successor's first.
        if (current && current.from !== message.from && (message.since < current.since || (message.since === current.since && message.from < current.from))) return;
        this.leader$.next({ from: message.from, since: message.since, status: fromTabStatus(message.status), pending: fromTabPending(message.pending) });
        // A new leader has not seen what was asked of the last one.
        if (current?.from !== message.from) for (const ask of this.asks.values()) if (ask.takenBy !== message.from) this.sendAsk(ask);
        return;
      }
      case 'gone':
        if (this.leader$.value?.from === message.from) this.leader$.next(null);
        // An election follows (this tab may win it): it can take seconds on a busy device, so the
        // request waits for the next leader longer than for an answer.
        for (const ask of this.asks.values()) if (ask.takenBy === message.from) this.sendAsk(ask, Math.max(ask.wait, ELECTION_WAIT_MS));
        return;
      case 'switch':
        this.hooks.onSwitch(message.value);
        return;
      case 'sync':
        if (this.hooks.leads()) this.serve(message.from, message.id);
        return;
      case 'fetch':
        if (this.hooks.leads()) this.hooks.fetch(message.request);
        return;
      case 'taken': {
        const ask = message.to === this.db.token ? this.asks.get(message.id) : undefined;
        if (!ask) return;
        ask.takenBy = message.from;
        clearTimeout(ask.timer);
        return;
      }
      case 'synced': {
        const ask = message.to === this.db.token ? this.asks.get(message.id) : undefined;
        if (ask) this.finish(ask, { ...message.result, error: message.result.error ? fromTabError(message.result.error) : null });
        return;
      }
    }
  }

  private serve(to: string, id: string): void {
    this.post({ kind: 'taken', to, id });
    void this.hooks
      .sync()
      .catch((error: unknown) => failure(SyncError.from(error)))
      .then((result) => {
        // A tab that closed meanwhile does not answer: its failure says nothing of the database, and the asker asks the tab that leads next.
        if (!this.hooks.leads()) return;
        void this.post({ kind: 'synced', to, id, result: { ...result, error: result.error ? toTabError(result.error) : null } });
      });
  }

  private post(message: Outgoing): Promise<void> {
    if (this.closed || this.channel.isClosed) return Promise.resolve();
    try {
      return this.channel.postMessage({ ...message, source: SOURCE, from: this.db.token } as Message).catch((error: unknown) => this.logger.warn({ err: error, kind: message.kind }, 'could not send a message to the other tabs'));
    } catch (error) {
      // The channel closes under a tab whose database closes.
      this.logger.warn({ err: error, kind: message.kind }, 'could not send a message to the other tabs');
      return Promise.resolve();
    }
  }
}

function failure(error: SyncError): SyncResult {
  return { success: false, error, syncedEvents: 0 };
}

function isMessage(value: unknown): value is Message {
  const message = value as Partial<Message> | null;
  return typeof message === 'object' && message !== null && message.source === SOURCE && typeof message.from === 'string' && typeof message.kind === 'string';
}

/** An error as it crosses to another tab: its details as JSON (a structured clone would refuse a function and drop the class). */
function toTabError(error: SyncError): TabError {
  let details: unknown;
  try {
    details = error.details === undefined ? undefined : JSON.parse(JSON.stringify(error.details));
  } catch {
    details = undefined;
  }
  return { code: error.code, message: error.message, ...(details === undefined ? {} : { details }), fromPeer: error.fromPeer };
}

/** Another tab may run another release of this plugin: its details are checked as a server's are. */
function fromTabError(wire: TabError): SyncError {
  const error = SyncError.fromWire(wire);
  error.fromPeer = wire.fromPeer;
  return error;
}

/** Another tab's pending documents as this one shows them: lists of ids, anything else left out (another release may send none). */
function fromTabPending(value: unknown): PendingDocuments {
  const pending: Record<string, readonly string[]> = {};
  if (typeof value !== 'object' || value === null) return pending;
  for (const [collection, ids] of Object.entries(value)) {
    if (Array.isArray(ids) && ids.every((id) => typeof id === 'string')) pending[collection] = ids as string[];
  }
  return pending;
}

function toTabStatus(status: SyncStatus): TabStatus {
  return { ...status, error: status.error ? toTabError(status.error) : null };
}

function fromTabStatus(status: TabStatus): SyncStatus {
  return { ...status, error: status.error ? fromTabError(status.error) : null };
}
