import { assertScopeCollection, assertScopeField, indexHash, sqlString } from '../scoped.js';

/** The tables and their indexes; idempotent. */
export const SCHEMA = `
  CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: never reuse a sequence, even after clearEventsBefore
    id TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    op TEXT NOT NULL,
    -- The size of data as pull pages count it (size.ts). Before data: reading it never reads a large document's overflow pages.
    data_bytes INTEGER NOT NULL,
    data TEXT NOT NULL,
    patch TEXT,
    base_event_id TEXT,
    hlc TEXT NOT NULL,
    client_id TEXT NOT NULL,
    server_time INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS events_collection_seq ON events (collection, seq);
  -- Ids of events removed by clearEventsBefore: a late retry of one is still a duplicate.
  CREATE TABLE IF NOT EXISTS compacted (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS heads (
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    data TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    hlc TEXT NOT NULL,
    client_id TEXT NOT NULL,
    -- The head event's operation: with it, a scoped page is read from heads alone (see ScopedSql.change).
    op TEXT NOT NULL,
    PRIMARY KEY (collection, document_id)
  ) WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS heads_seq ON heads (seq);
  -- The first user of each client id (claimClient).
  CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    user_key TEXT NOT NULL
  ) WITHOUT ROWID;
`;

/**
 * Indexes for scoped reads of one collection (see indexScopeFields): one on
 * each scope field's value and the sequence over its heads (partial: that
 * collection's only), and one on its events' document and sequence (for the
 * version a reader may hold). None for a collection without scope fields.
 */
export function scopeIndexes(collection: string, fields: readonly string[]): string[] {
  const sql: string[] = [];
  const literal = sqlString(assertScopeCollection(collection));
  for (const field of fields) {
    sql.push(`CREATE INDEX IF NOT EXISTS "heads_scope_${indexHash(collection, assertScopeField(field))}"
          ON heads (json_extract(data, ${sqlString(`$.${field}`)}), seq) WHERE collection = ${literal}`);
  }
  if (fields.length > 0) sql.push(`CREATE INDEX IF NOT EXISTS "events_document_${indexHash(collection)}" ON events (document_id, seq) WHERE collection = ${literal}`);
  return sql;
}
