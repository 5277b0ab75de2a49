import type pg from 'pg';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import type { DocumentHead, StoredEvent } from '../../shared/protocol/index.js';
import { assertClaimable } from './claims.js';
import { GroupCommit } from './postgres/group-commit.js';
import { inTransaction, storageError } from './postgres/connection.js';
import { openPool, postgresOptionsSchema, type PostgresOptions } from './postgres/pool.js';
import { INIT_LOCK, lockId, schemaSql } from './postgres/schema.js';
import { decodeEvent, decodeHead, statementSql, type EventRow, type HeadRow, type ScopedRow } from './postgres/statements.js';
import { scopedLimit, scopedPage, scopedThrough } from './scoped.js';
import { changesPage } from './size.js';
import type { ChangesPage, EventQuery, IncomingEvent, SaveResult, ScopedChange, ScopedPage, ScopedQuery, SyncStorage } from './types.js';

export type PostgresSyncStorageOptions = PostgresOptions;

/**
 * Storage shared by several server instances through one PostgreSQL database.
 *
 * Writers serialize on a transaction-level advisory lock taken before any
 * sequence is drawn, and the lock is released only after commit. So sequences
 * become visible in order: a reader that saw sequence n has already seen every
 * committed event below n (invariant 4), with no watermark bookkeeping.
 *
 * Writes of one instance go through its group commit (postgres/group-commit.ts):
 * calls that arrive together are decided and committed in one transaction.
 */
export class PostgresSyncStorage implements SyncStorage {
  private readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly ddl: ReturnType<typeof schemaSql>;
  private readonly sql: ReturnType<typeof statementSql>;
  private readonly schema: string;
  private readonly lockId: number;
  private readonly writer: GroupCommit;
  private initialized: Promise<void> | undefined;
  private closed = false;
  /** Reads under way, which close() waits for before it ends the pool. */
  private readonly reads = new Set<Promise<unknown>>();

  constructor(options: PostgresSyncStorageOptions) {
    const parsed = parseOptions(postgresOptionsSchema, options, 'PostgresSyncStorage');
    ({ pool: this.pool, owned: this.ownsPool } = openPool(parsed, 'PostgresSyncStorage'));
    this.schema = parsed.schema;
    this.ddl = schemaSql(parsed.schema, parsed.tablePrefix);
    this.sql = statementSql(parsed.schema, parsed.tablePrefix);
    this.lockId = lockId(parsed.schema, parsed.tablePrefix);
    this.writer = new GroupCommit(this.pool, this.sql, this.lockId);
  }

  async init(): Promise<void> {
    await this.ready();
  }

  async saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    await this.ready();
    this.assertOpen(); // close() may have begun while the tables were being checked
    if (events.length === 0) return [];
    return this.writer.save(events);
  }

  async getEventsAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    const { collections, limit } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) {
      await this.ready();
      return [];
    }
    const pgLimit = limit === undefined ? null : Math.ceil(limit);
    const result = collections
      ? await this.query<EventRow>('read events', this.sql.eventsAfterIn, [checkpoint, pgLimit, [...collections]])
      : await this.query<EventRow>('read events', this.sql.eventsAfter, [checkpoint, pgLimit]);
    return result.rows.map(decodeEvent);
  }

  async getChangesAfter(checkpoint: number, options: EventQuery = {}): Promise<ChangesPage> {
    const { collections, limit, maxBytes } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) {
      await this.ready();
      return [];
    }
    const pgLimit = limit === undefined ? null : Math.ceil(limit);
    if (maxBytes !== undefined) {
      const params = [checkpoint, pgLimit, Math.floor(maxBytes)];
      const page = collections
        ? await this.query<EventRow & { cut: boolean }>('read changes', this.sql.changesWithinIn, [...params, [...collections]])
        : await this.query<EventRow & { cut: boolean }>('read changes', this.sql.changesWithin, params);
      return changesPage(page.rows.map(decodeEvent), page.rows[0]?.cut ?? false);
    }
    const result = collections
      ? await this.query<EventRow>('read changes', this.sql.changesAfterIn, [checkpoint, pgLimit, [...collections]])
      : await this.query<EventRow>('read changes', this.sql.changesAfter, [checkpoint, pgLimit]);
    return result.rows.map(decodeEvent);
  }

  async getScopedChanges(checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
    const limit = scopedLimit(query.limit);
    if (limit !== undefined && limit <= 0) {
      await this.ready();
      return scopedPage([], false, checkpoint);
    }
    const { text, params } = this.sql.scopedChanges(checkpoint, query, limit, query.maxBytes);
    const result = await this.query<ScopedRow>('read scoped changes', text, params);
    const changes: ScopedChange[] = [];
    for (const row of result.rows) {
      if (row.seq === null) continue;
      changes.push(row.leave ? { ...decodeEvent(row), leave: true } : decodeEvent(row));
    }
    const cut = result.rows[0]?.cut ?? false;
    // Writers commit in sequence order (the write lock), so the latest head this statement saw has nothing uncommitted below it.
    return scopedPage(changes, cut, scopedThrough(changes, cut, limit, checkpoint, Number(result.rows[0]!.latest)));
  }

  /**
   * Per collection: an index on each scope field's text (in the "C"
   * collation scopes compare strings in) and the sequence over its heads,
   * and one on its events' document and sequence. Made under the init lock,
   * so servers starting together do not race. Idempotent.
   */
  async indexScopeFields(fields: Readonly<Record<string, readonly string[]>>): Promise<void> {
    const statements = Object.entries(fields).flatMap(([collection, names]) => (names.length > 0 ? this.ddl.scopeIndexes(collection, names) : []));
    await this.ready();
    if (statements.length === 0) return;
    await inTransaction(this.pool, 'index scope fields', async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [INIT_LOCK, this.lockId]);
      for (const statement of statements) await client.query(statement);
    });
  }

  async clearEventsBefore(checkpoint: number): Promise<number> {
    const result = await this.query<{ n: number }>('clear events', this.sql.clearBefore, [checkpoint]);
    return result.rows[0]?.n ?? 0;
  }

  async getHeads(collection: string, documentIds: readonly string[]): Promise<DocumentHead[]> {
    if (documentIds.length === 0) return [];
    const result = await this.query<HeadRow>('read heads', this.sql.heads, [collection, [...new Set(documentIds)]]);
    const byId = new Map(result.rows.map((row) => [row.document_id, decodeHead(row)]));
    return documentIds.flatMap((id) => {
      const head = byId.get(id);
      byId.delete(id); // a repeated id is answered once
      return head ? [head] : [];
    });
  }

  async getLatestSequence(): Promise<number> {
    const result = await this.query<{ seq: string }>('read latest sequence', this.sql.latest, []);
    return Number(result.rows[0]!.seq);
  }

  async countEvents(): Promise<number> {
    const result = await this.query<{ n: string }>('count events', this.sql.count, []);
    return Number(result.rows[0]!.n);
  }

  async claimClient(clientId: string, userKey: string): Promise<string> {
    assertClaimable(clientId, userKey);
    const claimed = await this.query<{ user_key: string }>('claim client id', this.sql.claim, [clientId, userKey]);
    const owner = claimed.rows[0] ?? (await this.query<{ user_key: string }>('claim client id', this.sql.owner, [clientId])).rows[0];
    if (!owner) throw new SyncError('STORAGE_ERROR', `cannot claim client id ${clientId}: the claim was neither recorded nor found`);
    return owner.user_key;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writer.settled(); // calls already queued are still written
    await Promise.allSettled([...this.reads]); // and reads under way are answered
    if (this.ownsPool) await this.pool.end();
  }

  /** Creates the tables once per instance; a failed attempt is retried by the next call. */
  private ready(): Promise<void> {
    if (this.closed) return Promise.reject(new SyncError('STORAGE_ERROR', 'PostgreSQL storage is closed'));
    this.initialized ??= this.createTables().catch((error: unknown) => {
      this.initialized = undefined;
      throw error;
    });
    return this.initialized;
  }

  private async createTables(): Promise<void> {
    await inTransaction(this.pool, 'create tables', async (client) => {
      // CREATE ... IF NOT EXISTS races with itself when two servers start at once; the lock makes it one at a time.
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [INIT_LOCK, this.lockId]);
      const exists = await client.query(this.ddl.schemaExists, [this.schema]);
      // Only create a missing schema: CREATE SCHEMA checks privileges even when the schema exists.
      if (exists.rowCount === 0) await client.query(this.ddl.createSchema);
      await client.query(this.ddl.createTables);
    });
  }

  private async query<R extends pg.QueryResultRow>(what: string, sql: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    await this.ready();
    this.assertOpen();
    const reading = this.pool.query<R>(sql, params);
    this.reads.add(reading);
    try {
      return await reading;
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    } finally {
      this.reads.delete(reading);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new SyncError('STORAGE_ERROR', 'PostgreSQL storage is closed');
  }
}
