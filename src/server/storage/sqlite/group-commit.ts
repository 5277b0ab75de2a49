import type Database from 'better-sqlite3';
import { decideSave } from '../save.js';
import type { SaveResult } from '../types.js';
import { storageError } from './connection.js';
import { headRows, type EncodedEvent, type Statements } from './statements.js';

/** One saveEvents call waiting for its group commit, its events already encoded. */
interface PendingSave {
  events: EncodedEvent[];
  resolve(results: SaveResult[]): void;
  reject(error: unknown): void;
}

/**
 * The write path. Pushes that arrive in the same tick are written in one
 * transaction, so many clients pushing at once share one fsync instead of
 * paying one each; each call is answered, or fails, on its own.
 */
export class GroupCommit {
  private readonly writeBatch: Database.Transaction<(pending: PendingSave[]) => SaveResult[][]>;
  private queue: PendingSave[] = [];
  private flushScheduled = false;

  constructor(db: Database.Database, statements: Statements) {
    this.writeBatch = db.transaction((pending: PendingSave[]) => pending.map((call) => call.events.map((event) => saveOne(statements, event))));
  }

  /** Queues a call's events for the transaction at the end of this tick. */
  save(events: EncodedEvent[]): Promise<SaveResult[]> {
    return new Promise((resolve, reject) => {
      this.queue.push({ events, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Writes what is queued now (a read calls it first, so it sees every write issued before it). */
  flush(): void {
    this.flushScheduled = false;
    const pending = this.queue;
    if (pending.length === 0) return;
    this.queue = [];
    let results: SaveResult[][];
    try {
      // IMMEDIATE: the write lock is taken (waiting up to busy_timeout) before the heads are read. A
      // deferred transaction that read first could not upgrade once another process (serve --workers) wrote.
      results = this.writeBatch.immediate(pending);
    } catch (error) {
      const failure = storageError('cannot save events', error);
      for (const call of pending) call.reject(failure);
      return;
    }
    pending.forEach((call, i) => call.resolve(results[i]!));
  }
}

/** The conditional append of one event; runs inside the flush transaction. */
function saveOne(statements: Statements, event: EncodedEvent): SaveResult {
  const known = statements.seqById.get({ id: event.id })?.seq;
  // The id alone decides a duplicate: its document's head is read only for a new id.
  const head = known === undefined ? statements.head.get(event.collection, event.document_id) : undefined;
  const refused = decideSave({ id: event.id, baseEventId: event.base_event_id }, known, head, headRows);
  if (refused) return refused;
  const serverTime = Date.now();
  const seq = Number(statements.insertEvent.run(Object.assign({}, event, { server_time: serverTime })).lastInsertRowid);
  statements.upsertHead.run({
    collection: event.collection,
    document_id: event.document_id,
    seq,
    event_id: event.id,
    data: event.data,
    deleted: event.op === 'delete' ? 1 : 0,
    hlc: event.hlc,
    client_id: event.client_id,
    op: event.op,
  });
  return { id: event.id, status: 'accepted', seq };
}
