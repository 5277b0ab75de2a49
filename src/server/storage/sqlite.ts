import type Database from 'better-sqlite3';
import { z } from 'zod';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import type { DocumentHead, StoredEvent } from '../../shared/protocol/index.js';
import { assertClaimable } from './claims.js';
import { scopedLimit, scopedPage, scopedThrough } from './scoped.js';
import { openDatabase, storageError } from './sqlite/connection.js';
import { GroupCommit } from './sqlite/group-commit.js';
import { SharedPages, readChangesPage } from './sqlite/pages.js';
import { scopeIndexes } from './sqlite/schema.js';
import { ScopedStatements, decodeChange, decodeEvent, decodeHead, encodeEvent, prepareStatements, scopedReadSql, type CandidateRow, type EncodedEvent, type Statements } from './sqlite/statements.js';
import type { ChangesPage, EventQuery, IncomingEvent, SaveResult, ScopedChange, ScopedPage, ScopedQuery, SyncStorage } from './types.js';
import { requireOptional } from '../optional.js';

export { scopedReadSql };

const optionsSchema = z.strictObject({
  /** The database file; its directory is created when missing. `:memory:` for a throwaway database. */
  path: z.string().min(1),
  /**
   * How much of the file SQLite reads through a memory map (PRAGMA
   * mmap_size) instead of a read call per page: 0 turns it off, as on a
   * network filesystem. A scoped catch-up reads rows strewn over the file.
   */
  mmapBytes: z.number().int().nonnegative().default(256 * 1024 * 1024),
});
export type SqliteSyncStorageOptions = z.input<typeof optionsSchema>;

/**
 * Durable storage in one SQLite file (WAL, synchronous=FULL). Pushes that
 * arrive in the same tick are written in one transaction (sqlite/group-commit.ts),
 * so many clients pushing at once share one fsync instead of paying one each.
 */
export class SqliteSyncStorage implements SyncStorage {
  private readonly path: string;
  private readonly mmapBytes: number;
  /** better-sqlite3, an optional peer dependency: loaded when this storage is created. */
  private readonly driver: typeof Database;
  private db: Database.Database | undefined;
  private statements: Statements | undefined;
  private writer: GroupCommit | undefined;
  private closed = false;
  private readonly scopedStatements = new ScopedStatements();
  private readonly sharedPages = new SharedPages();

  constructor(options: SqliteSyncStorageOptions) {
    ({ path: this.path, mmapBytes: this.mmapBytes } = parseOptions(optionsSchema, options, 'SqliteSyncStorage'));
    this.driver = requireOptional<typeof Database>('better-sqlite3', 'SqliteSyncStorage');
  }

  async init(): Promise<void> {
    this.open();
  }

  async saveEvents(events: readonly IncomingEvent[]): Promise<SaveResult[]> {
    this.open();
    if (events.length === 0) return [];
    let encoded: EncodedEvent[];
    try {
      encoded = events.map(encodeEvent);
    } catch (error) {
      throw storageError('cannot encode events', error);
    }
    return this.writer!.save(encoded);
  }

  async getEventsAfter(checkpoint: number, options: EventQuery = {}): Promise<StoredEvent[]> {
    const statements = this.ready();
    const { collections, limit } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) return [];
    const params = { after: checkpoint, limit: limit === undefined ? -1 : Math.ceil(limit) };
    const rows = this.run('read events', () =>
      collections
        ? statements.eventsAfterIn.all({ ...params, collections: JSON.stringify(collections) })
        : statements.eventsAfter.all(params),
    );
    return rows.map(decodeEvent);
  }

  async getChangesAfter(checkpoint: number, options: EventQuery = {}): Promise<ChangesPage> {
    const statements = this.ready();
    const { collections, limit, maxBytes } = options;
    if (collections?.length === 0 || (limit !== undefined && limit <= 0)) return [];
    const params = { after: checkpoint, limit: limit === undefined ? -1 : Math.ceil(limit) };
    const inList = collections && JSON.stringify(collections);
    const sizes = () => (inList === undefined ? statements.changeSizes.iterate(params) : statements.changeSizesIn.iterate({ ...params, collections: inList }));
    const read = (through: number) =>
      inList === undefined ? statements.changesAfter.all({ ...params, through }) : statements.changesAfterIn.all({ ...params, through, collections: inList });
    return this.run('read changes', () => {
      const key = `${checkpoint}|${inList ?? '*'}|${params.limit}|${maxBytes ?? ''}`;
      const latest = statements.latest.get()?.seq ?? 0;
      return this.sharedPages.get(key, latest, () => readChangesPage(sizes, read, maxBytes));
    });
  }

  async getScopedChanges(checkpoint: number, query: ScopedQuery): Promise<ScopedPage> {
    const statements = this.ready();
    const limit = scopedLimit(query.limit);
    if (limit !== undefined && limit <= 0) return scopedPage([], false, checkpoint);
    const { maxBytes } = query;
    return this.run('read scoped changes', () =>
      // One read transaction: the page, its events and the latest sequence are of one snapshot.
      this.db!.transaction(() => {
        const latest = statements.latest.get()?.seq ?? 0;
        const { sql, params: bound } = scopedReadSql(checkpoint, query, latest);
        const candidates = this.scopedStatements.get(this.db!, sql);
        // Each row is a head's change; the page ends where the sizes say (leaves count no bytes).
        const chosen: CandidateRow[] = [];
        let bytes = 0;
        let cut = false;
        for (const row of candidates.iterate(bound)) {
          if (maxBytes !== undefined && !row.leave) {
            bytes += row.bytes;
            if (bytes > maxBytes && chosen.length > 0) {
              cut = true;
              break;
            }
          }
          chosen.push(row);
        }
        const changes = chosen.map(decodeChange);
        return scopedPage(changes, cut, scopedThrough(changes, cut, limit, checkpoint, latest));
      })(),
    );
  }

  /** The indexes of scoped reads, per collection (sqlite/schema.ts). Idempotent. */
  async indexScopeFields(fields: Readonly<Record<string, readonly string[]>>): Promise<void> {
    this.ready();
    const sql = Object.entries(fields).flatMap(([collection, names]) => scopeIndexes(collection, names));
    if (sql.length === 0) return;
    this.run('index scope fields', () => this.db!.transaction(() => sql.forEach((statement) => this.db!.exec(statement))).immediate());
  }

  async claimClient(clientId: string, userKey: string): Promise<string> {
    assertClaimable(clientId, userKey);
    const statements = this.ready();
    // Read first: after a restart every device that reconnects is known, and a read costs no write lock or fsync.
    const known = this.run('claim client id', () => statements.owner.get(clientId));
    if (known) return known.user_key;
    return this.run('claim client id', () =>
      this.db!.transaction(() => {
        statements.claim.run(clientId, userKey);
        return statements.owner.get(clientId)!.user_key;
      }).immediate(),
    );
  }

  async clearEventsBefore(checkpoint: number): Promise<number> {
    const statements = this.ready();
    return this.run('clear events', () =>
      this.db!.transaction(() => {
        statements.rememberCleared.run(checkpoint);
        return statements.clearBefore.run(checkpoint).changes;
      }).immediate(),
    );
  }

  async getHeads(collection: string, documentIds: readonly string[]): Promise<DocumentHead[]> {
    const statements = this.ready();
    if (documentIds.length === 0) return [];
    const rows = this.run('read heads', () => statements.heads.all(collection, JSON.stringify([...new Set(documentIds)])));
    const byId = new Map(rows.map((row) => [row.document_id, decodeHead(row)]));
    return documentIds.flatMap((id) => {
      const head = byId.get(id);
      byId.delete(id); // a repeated id is answered once
      return head ? [head] : [];
    });
  }

  async getLatestSequence(): Promise<number> {
    const statements = this.ready();
    return this.run('read latest sequence', () => statements.latest.get()?.seq ?? 0);
  }

  async countEvents(): Promise<number> {
    const statements = this.ready();
    return this.run('count events', () => statements.count.get()!.n);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.db) {
      this.writer!.flush();
      this.db.close();
    }
    this.closed = true;
    this.db = undefined;
    this.statements = undefined;
    this.scopedStatements.clear();
    this.sharedPages.clear();
    this.writer = undefined;
  }

  /** Opens the file on first use; init() is the usual first use. */
  private open(): Statements {
    if (this.closed) throw new SyncError('STORAGE_ERROR', `SQLite storage ${this.path} is closed`);
    if (this.statements) return this.statements;
    try {
      const db = openDatabase(this.driver, this.path, this.mmapBytes);
      const statements = prepareStatements(db);
      this.writer = new GroupCommit(db, statements);
      this.statements = statements;
      this.db = db;
      return statements;
    } catch (error) {
      throw storageError(`cannot open SQLite database ${this.path}`, error);
    }
  }

  /** For reads: first writes any queued pushes, so a read sees every write issued before it. */
  private ready(): Statements {
    const statements = this.open();
    this.writer!.flush();
    return statements;
  }

  private run<T>(what: string, action: () => T): T {
    try {
      return action();
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    }
  }
}
