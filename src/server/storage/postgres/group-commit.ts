import type pg from 'pg';
import type { IncomingEvent, SaveResult } from '../types.js';
import { checkout, storageError, type CheckedOut } from './connection.js';
import { headKey, planSave, type StoredState } from './plan.js';
import { WRITE_LOCK } from './schema.js';
import { decodeHead, encodeIncoming, type StateRow } from './statements.js';

/** Calls joining one group commit stop being added once it holds this many events (a bigger call goes alone). */
const MAX_GROUP_EVENTS = 5000;
/** ... and no more JSON than this (jsonb arrays stop at 256 MB, and the text is built in memory). */
const MAX_GROUP_CHARS = 32 * 1024 * 1024;

/** One saveEvents call waiting for its group commit, its events already encoded as JSON. */
interface PendingSave {
  events: readonly IncomingEvent[];
  encoded: string[];
  resolve(results: SaveResult[]): void;
  reject(error: unknown): void;
}

/** The statements a group commit runs (see statementSql). */
export interface GroupCommitSql {
  readState: string;
  append: string;
}

/**
 * The write path of one instance. It writes through one transaction at a
 * time; calls that arrive meanwhile queue up and are decided together, in
 * arrival order, by the next transaction (four round trips: BEGIN with the
 * lock, one read, one append, COMMIT), as if each call had run alone one
 * after the other.
 */
export class GroupCommit {
  private queue: PendingSave[] = [];
  /** The loop writing queued calls, while there are any. */
  private draining: Promise<void> | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly sql: GroupCommitSql,
    private readonly lockId: number,
  ) {}

  /** Queues one call; it settles once its group has committed or failed. */
  save(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    let encoded: string[];
    try {
      encoded = events.map(encodeIncoming); // here, so an event that cannot be encoded fails only its own call
    } catch (error) {
      return Promise.reject(storageError('cannot save events', error));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ events, encoded, resolve, reject });
      this.draining ??= this.drain();
    });
  }

  /** Settles once every call queued so far is written (or failed). */
  async settled(): Promise<void> {
    await this.draining;
  }

  /** Writes queued calls, one group commit after the other, until the queue is empty. Never rejects. */
  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const group = await this.saveGroup();
        // A group that failed as a whole is tried again call by call, so one call that cannot be
        // stored (say, a string PostgreSQL refuses) fails alone instead of taking its neighbours along.
        if (group) for (const call of group) await this.saveGroup([call]);
      }
    } finally {
      this.draining = undefined;
    }
  }

  /**
   * One transaction for `retry` or, without it, for the calls queued when the
   * write lock is granted: calls that arrive while it is awaited join. Settles
   * every call it took: each gets its results after COMMIT, or the error.
   * Returns the calls to try again one by one when a group of several failed
   * after it had its connection; nothing of it was committed then.
   */
  private async saveGroup(retry?: PendingSave[]): Promise<PendingSave[] | undefined> {
    let group: PendingSave[] = retry ?? [];
    const take = () => (retry ? retry : (group = this.takeGroup()));
    let checkedOut: CheckedOut;
    try {
      checkedOut = await checkout(this.pool);
    } catch (error) {
      const failure = storageError('cannot save events', error);
      for (const call of take()) call.reject(failure);
      return undefined;
    }
    const { client } = checkedOut;
    let broken: Error | undefined;
    let results: SaveResult[][];
    try {
      // The lock is the transaction's: it is held until COMMIT or ROLLBACK. Both are our own integers.
      await client.query(`BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK}, ${this.lockId})`);
      results = await this.decideAndAppend(client, take());
      await client.query('COMMIT');
    } catch (error) {
      // A connection that cannot even roll back is discarded rather than returned to the pool.
      await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
      checkedOut.release(broken);
      if (group.length === 0) group = take(); // BEGIN failed: the queued calls are this group
      if (!retry && group.length > 1) return group;
      const failure = storageError('cannot save events', error);
      for (const call of group) call.reject(failure);
      return undefined;
    }
    checkedOut.release();
    group.forEach((call, i) => call.resolve(results[i]!));
    return undefined;
  }

  /** The next calls from the queue, in order: at least one, and within MAX_GROUP_EVENTS and MAX_GROUP_CHARS unless one call alone is over. */
  private takeGroup(): PendingSave[] {
    let count = 0;
    let chars = 0;
    let taken = 0;
    while (taken < this.queue.length) {
      const call = this.queue[taken]!;
      const size = call.events.length;
      const length = call.encoded.reduce((sum, text) => sum + text.length, 0);
      if (taken > 0 && (count + size > MAX_GROUP_EVENTS || chars + length > MAX_GROUP_CHARS)) break;
      count += size;
      chars += length;
      taken++;
    }
    return this.queue.splice(0, taken);
  }

  /** Inside the locked transaction: decides every event of the group and appends the accepted ones. */
  private async decideAndAppend(client: pg.PoolClient, group: readonly PendingSave[]): Promise<SaveResult[][]> {
    const events = group.flatMap((call) => call.events);
    // READ COMMITTED: this statement sees every writer that held the lock before us.
    const keys = new Map(events.map((e) => [headKey(e.collection, e.documentId), e]));
    const rows = await client.query<StateRow>(this.sql.readState, [
      [...new Set(events.map((e) => e.id))],
      [...keys.values()].map((e) => e.collection),
      [...keys.values()].map((e) => e.documentId),
    ]);
    const state: StoredState = { seqById: new Map(), heads: new Map() };
    for (const row of rows.rows) {
      state.seqById.set(row.event_id, Number(row.seq));
      if (row.collection !== null) state.heads.set(headKey(row.collection, row.document_id), decodeHead(row));
    }
    // Plan once to learn which events are appended, then again with their real sequences (planSave is pure).
    const dryRun = planSave(events, state, () => 0);
    let plan = dryRun;
    if (dryRun.appended.length > 0) {
      const encoded = group.flatMap((call) => call.encoded);
      const head = new Map<number, string>();
      for (const [key, index] of dryRun.lastOfDocument) head.set(index, state.heads.has(key) ? 'move' : 'new');
      const appended = `[${dryRun.appended
        .map((i) => (head.has(i) ? `{"head":"${head.get(i)}",${encoded[i]!.slice(1)}` : encoded[i]))
        .join(',')}]`;
      const block = await client.query<{ last: string }>(this.sql.append, [appended, dryRun.appended.length, Date.now()]);
      let next = Number(block.rows[0]!.last) - dryRun.appended.length + 1;
      plan = planSave(events, state, () => next++);
    }
    let offset = 0;
    return group.map((call) => plan.results.slice(offset, (offset += call.events.length)));
  }
}
