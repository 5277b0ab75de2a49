import type { DocumentHead, StoredEvent, SyncEvent } from '../../shared/protocol.js';

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
 * The contract every server storage implements; `test/storage.conformance.ts`
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
   * history, and is exact after any compaction.
   */
  getChangesAfter(checkpoint: number, options?: EventQuery): Promise<ChangesPage>;
  /** Events after `checkpoint` in the given collections that `clientId` did not write. */
  getEventsForClient(clientId: string, collections: readonly string[], checkpoint?: number): Promise<StoredEvent[]>;
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
