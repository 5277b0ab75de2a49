import type { DocumentHead, RemoteEvent, StoredEvent, SyncEvent } from '../../shared/protocol/index.js';
import type { Scope } from '../../shared/scope.js';

/**
 * An event on its way into storage: what the client pushed, stamped with its
 * author. The server hands storage its own parsed copy and reads only the id
 * afterwards; a storage that keeps the object must still copy it (the memory
 * storage keeps a frozen deep copy), since it is also the source of live
 * messages.
 */
export type IncomingEvent = SyncEvent & { clientId: string };

/**
 * What storage answers for each event, in order:
 * - accepted: appended under a new sequence number;
 * - duplicate: this event id was stored before (a retry); the first sequence is returned;
 * - conflict: the document's head is not the version the event was based on;
 *   nothing was stored and the current head is returned (null when the
 *   server holds no version of the document the event claims as its base).
 */
export type SaveResult =
  | { id: string; status: 'accepted'; seq: number }
  | { id: string; status: 'duplicate'; seq: number }
  | { id: string; status: 'conflict'; head: DocumentHead | null };

export interface EventQuery {
  collections?: readonly string[];
  limit?: number;
  /**
   * For getChangesAfter (a pull page): the most bytes of documents a page
   * holds, each measured as the UTF-8 length of its data's JSON text
   * (documentBytes in size.ts). Events are taken in order while their sizes
   * add up to no more than this; the first is always taken, however large,
   * so that a reader always moves on. A page this ends early is marked
   * `cutByBytes`. getEventsAfter ignores it.
   */
  maxBytes?: number;
}

/**
 * What getChangesAfter answers: the events in sequence order, marked
 * `cutByBytes` when `maxBytes` ended the page before `limit` did or the
 * changes ran out (more changes follow). An array without the mark is a page
 * that `maxBytes` did not end.
 */
export type ChangesPage = StoredEvent[] & { cutByBytes?: boolean };

/**
 * A scoped reader's catch-up in one collection (getScopedChanges). The
 * reader's scope is `scope`; what it holds is the documents of
 * `held.scope` as they were at sequence `held.through`, plus what it
 * received after that up to the checkpoint. `held.through` 0 means it holds
 * nothing yet. While the scope is unchanged the reader sends `held` equal
 * to `scope` with `through` equal to its checkpoint; when the scope changes,
 * it starts again from checkpoint 0 with the old scope and checkpoint in
 * `held`, and gets only the difference.
 */
export interface ScopedQuery {
  collection: string;
  scope: Scope;
  held: { scope: Scope; through: number };
  /**
   * For a catch-up from nothing (`held.through` 0): the latest sequence
   * when it began. Every version the reader was sent was a head at or after
   * that moment, so a head at or before `start` replaced none of them and
   * is never a leave. Without it, each page of a first sync judged every
   * out-of-scope head it read past.
   */
  start?: number;
  limit?: number;
  maxBytes?: number;
}

/**
 * A head of a scoped page, as a catch-up sends it: its event without the
 * patch, base and server time, which a reader catching up has no use for (a
 * patch is relative to a base it may never have held), so that a storage
 * may read a page from its heads alone. Marked `leave` when it left the
 * reader's scope: the reader removes the document (its data is not sent).
 */
export type ScopedChange = RemoteEvent & { leave?: true };

/**
 * What getScopedChanges answers: changes and leaves in sequence order, and
 * `through`, the sequence the reader's checkpoint moves to (the last head
 * looked at, which may be past the last one returned: heads outside the
 * scope are passed over, not sent).
 */
export type ScopedPage = ScopedChange[] & { cutByBytes?: boolean; through: number };

/**
 * The contract every server storage implements; `runStorageConformance` (src/testing)
 * proves it for each implementation.
 *
 * Sequences are assigned by storage, strictly increase, and are the only
 * checkpoints: `getEventsAfter(c)` never returns an event at or below `c`, and
 * an event that becomes visible later never has a sequence at or below one
 * already returned (storages whose sequences are not commit-ordered must hold
 * readers back to a safe watermark).
 */
export interface SyncStorage {
  /** Creates tables or files; called by the server's start(). Idempotent. */
  init(): Promise<void>;
  /**
   * Appends each event if the document's head is the version it was based on
   * (`baseEventId`, null for "no such document"). Atomic per event and
   * idempotent on the event id.
   */
  saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]>;
  /** Events with a sequence above `checkpoint`, ascending: the history that is still kept. */
  getEventsAfter(checkpoint: number, options?: EventQuery): Promise<StoredEvent[]>;
  /**
   * What a reader at `checkpoint` needs to catch up: for every document changed
   * after it, the event that is its current head (deletes included), ascending
   * by sequence. Costs in proportion to the documents changed, not to the
   * history, and is exact after any compaction. The page may be shared with
   * other readers that asked the same (SQLite keeps recent pages): callers
   * must not change it or its events.
   */
  getChangesAfter(checkpoint: number, options?: EventQuery): Promise<ChangesPage>;
  /**
   * A scoped reader's catch-up (see ScopedQuery). With K the checkpoint, E
   * the scope, H and C the held scope and its sequence, and L = max(K, C),
   * it lists, for every document head h of the collection with h.seq > K,
   * in ascending order of sequence:
   * - h itself when h matches E and not (h.seq <= C and h matches H): the
   *   reader lacks this version (deletes included);
   * - h as a leave (`leave: true`) when h does not match E, h.seq > L, and
   *   the reader may hold the document: some version x of it before h,
   *   from its version at C (or its first, when it had none at C) on, is no
   *   delete and matches E (the reader may hold x from a page, a live
   *   message or its own acknowledged push, and holds no version outside
   *   E). When compaction removed the versions needed
   *   to tell (its oldest kept event has a base and comes after C) and L >
   *   0, the leave is sent anyway: a leave for a document the reader does
   *   not hold costs it nothing.
   * Other heads are passed over. Readers keep C where their last whole
   * catch-up ended until the next one ends (not at each page's checkpoint):
   * then a document that left the scope between two pages gets its leave.
   * `limit` and `maxBytes` bound the page as in getChangesAfter (leaves
   * count towards the limit, not the bytes). `through` is where the reader's
   * checkpoint moves: the last change of a page cut short, else the last
   * head this storage may show (never past a sequence that could still
   * commit below it). Reads the documents in the scope and the heads changed
   * after L, using the indexes made by indexScopeFields where they apply.
   */
  getScopedChanges(checkpoint: number, query: ScopedQuery): Promise<ScopedPage>;
  /**
   * Indexes the fields scopes may name in each collection (the server's
   * `scopeFields` option), so that scoped reads cost in proportion to the
   * scope. Called by the server's start(), after init(). Idempotent.
   */
  indexScopeFields(fields: Readonly<Record<string, readonly string[]>>): Promise<void>;
  /**
   * Compaction: removes events with a sequence below `checkpoint` that a later
   * event of the same document has superseded. Each document's head event
   * stays (a delete stays as its tombstone), so getChangesAfter() is exact from
   * any checkpoint. Returns how many were removed.
   */
  clearEventsBefore(checkpoint: number): Promise<number>;
  /** The current heads of the given documents (absent ones are left out). */
  getHeads(collection: string, documentIds: readonly string[]): Promise<DocumentHead[]>;
  /** The highest sequence a reader may rely on (0 when empty). */
  getLatestSequence(): Promise<number>;
  /** How many events are stored. */
  countEvents(): Promise<number>;
  /**
   * Records that `userKey` is the user of `clientId`, unless some user
   * already is: atomically, so that of two first claims at once exactly one
   * wins, on every server instance sharing the storage. Returns the user key
   * the client id belongs to: the existing one if it was claimed before,
   * else `userKey`. A claim is never dropped. Both are strings every
   * storage keeps as they are (see isStorableText): a client id as the
   * handshake takes it, a user key of 1 to 1024 characters.
   */
  claimClient(clientId: string, userKey: string): Promise<string>;
  close(): Promise<void>;
}
