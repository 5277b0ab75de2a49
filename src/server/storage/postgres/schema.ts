import { assertScopeCollection, assertScopeField, indexHash, sqlString } from '../scoped.js';

// Advisory locks (class id, object id): the class ids are ours, the object id is the table namespace (lockId).
export const WRITE_LOCK = 0x5258_4f53; // "RXOS"
export const INIT_LOCK = 0x5258_4f49; // "RXOI"

/** The advisory-lock object id of one schema and prefix: 32-bit FNV-1a as a signed int4. */
export function lockId(schema: string, prefix: string): number {
  const text = `${schema}.${prefix}`;
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash | 0;
}

/** The quoted names of the sync tables in `schema`, each name behind `prefix`. */
export function tableNames(schema: string, prefix: string) {
  const q = (name: string) => `"${schema}"."${prefix}${name}"`;
  return { events: q('events'), heads: q('heads'), seq: q('seq'), compacted: q('compacted'), clients: q('clients') };
}

/** The statements that make the schema, the tables and the scope indexes; all idempotent. */
export function schemaSql(schema: string, prefix: string) {
  const { events, heads, seq, compacted, clients } = tableNames(schema, prefix);
  return {
    createTables: `
      CREATE SEQUENCE IF NOT EXISTS ${seq};
      CREATE TABLE IF NOT EXISTS ${events} (
        seq bigint PRIMARY KEY, -- from ${seq}, taken under the write lock
        id text NOT NULL UNIQUE,
        collection text NOT NULL,
        document_id text NOT NULL,
        op text NOT NULL,
        data_bytes integer NOT NULL, -- the size of data as pull pages count it (size.ts)
        data jsonb NOT NULL,
        patch jsonb,
        base_event_id text,
        hlc text NOT NULL,
        client_id text NOT NULL,
        server_time bigint NOT NULL
      );
      CREATE INDEX IF NOT EXISTS "${prefix}events_collection_seq" ON ${events} (collection, seq);
      CREATE TABLE IF NOT EXISTS ${heads} (
        collection text NOT NULL,
        document_id text NOT NULL,
        seq bigint NOT NULL,
        event_id text NOT NULL,
        data jsonb NOT NULL,
        deleted boolean NOT NULL,
        hlc text NOT NULL,
        client_id text NOT NULL,
        PRIMARY KEY (collection, document_id)
      );
      -- Ids of events removed by clearEventsBefore: a late retry of one is still a duplicate.
      CREATE TABLE IF NOT EXISTS ${compacted} (
        id text PRIMARY KEY,
        seq bigint NOT NULL
      );
      -- heads are never deleted, so max(heads.seq) is the last committed sequence, even after clearEventsBefore.
      CREATE INDEX IF NOT EXISTS "${prefix}heads_seq" ON ${heads} (seq);
      -- The first user of each client id (claimClient).
      CREATE TABLE IF NOT EXISTS ${clients} (
        client_id text PRIMARY KEY,
        user_key text NOT NULL
      );`,
    schemaExists: 'SELECT 1 FROM pg_namespace WHERE nspname = $1',
    createSchema: `CREATE SCHEMA IF NOT EXISTS "${schema}"`,
    /** Indexes for scoped reads of one collection (see indexScopeFields); names are the prefix and a hash, within 63 bytes. */
    scopeIndexes: (collection: string, fields: readonly string[]) => {
      const literal = sqlString(assertScopeCollection(collection));
      return [
        ...fields.map(
          (field) => `CREATE INDEX IF NOT EXISTS "${prefix}hs_${indexHash(collection, assertScopeField(field))}"
            ON ${heads} ((data->>${sqlString(field)}) COLLATE "C", seq) WHERE collection = ${literal}`,
        ),
        `CREATE INDEX IF NOT EXISTS "${prefix}ed_${indexHash(collection)}" ON ${events} (document_id, seq) WHERE collection = ${literal}`,
      ];
    },
  };
}
