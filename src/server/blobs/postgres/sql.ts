/**
 * The PostgreSQL blob tables and statements. Content lives in rows of
 * CHUNK_BYTES (the last one shorter), numbered from 0, under a content id:
 * an upload writes its rows under a new id, and completing it hands the
 * same id to the blob, so the bytes are never copied.
 */

/** The bytes of one chunk row: a range read fetches only the rows it covers. */
export const CHUNK_BYTES = 256 * 1024;

export function blobTableNames(schema: string, prefix: string) {
  const q = (name: string) => `"${schema}"."${prefix}${name}"`;
  return { blobs: q('blobs'), uploads: q('blob_uploads'), chunks: q('blob_chunks'), contents: q('blob_contents') };
}

export function blobSql(schema: string, prefix: string) {
  const { blobs, uploads, chunks, contents } = blobTableNames(schema, prefix);
  return {
    schemaExists: 'SELECT 1 FROM pg_namespace WHERE nspname = $1',
    createSchema: `CREATE SCHEMA IF NOT EXISTS "${schema}"`,
    chunksExist: `SELECT to_regclass('${chunks.replaceAll("'", "''")}') IS NOT NULL AS exists`,
    createTables: `
      CREATE SEQUENCE IF NOT EXISTS ${contents};
      CREATE TABLE IF NOT EXISTS ${chunks} (
        content bigint NOT NULL,
        part integer NOT NULL, -- bytes [part * ${CHUNK_BYTES}, ...) of the content
        bytes bytea NOT NULL,
        PRIMARY KEY (content, part)
      );
      CREATE TABLE IF NOT EXISTS ${blobs} (
        digest text PRIMARY KEY,
        content bigint NOT NULL,
        length bigint NOT NULL,
        owner text NOT NULL, -- the owner who completed it first, charged for it
        stored_at bigint NOT NULL -- ms since the epoch: stored, or last confirmed to an uploader
      );
      CREATE INDEX IF NOT EXISTS "${prefix}blobs_owner" ON ${blobs} (owner);
      CREATE INDEX IF NOT EXISTS "${prefix}blobs_stored_at" ON ${blobs} (stored_at);
      CREATE TABLE IF NOT EXISTS ${uploads} (
        owner text NOT NULL,
        digest text NOT NULL,
        content bigint NOT NULL,
        length bigint NOT NULL,
        received bigint NOT NULL,
        appended_at bigint NOT NULL,
        PRIMARY KEY (owner, digest)
      );
      CREATE INDEX IF NOT EXISTS "${prefix}blob_uploads_appended_at" ON ${uploads} (appended_at);`,
    /**
     * Photos and PDFs are compressed already: keep chunks uncompressed and
     * out of line, which also lets substring() fetch only the part it needs.
     */
    chunksStorage: `ALTER TABLE ${chunks} ALTER COLUMN bytes SET STORAGE EXTERNAL`,

    /**
     * When the blob is stored: its length, the blob young again, and this
     * owner's upload of it (moot now) removed. $1 digest, $2 owner, $3 now.
     */
    confirmStored: `
      WITH blob AS (
        UPDATE ${blobs} SET stored_at = greatest(stored_at, $3) WHERE digest = $1 RETURNING length
      ), moot AS (
        DELETE FROM ${uploads} WHERE digest = $1 AND owner = $2 AND EXISTS (SELECT 1 FROM blob) RETURNING content
      ), moot_chunks AS (
        DELETE FROM ${chunks} WHERE content IN (SELECT content FROM moot)
      )
      SELECT length FROM blob`,
    uploadReceived: `SELECT received FROM ${uploads} WHERE owner = $1 AND digest = $2`,
    lockUpload: `SELECT content, length, received FROM ${uploads} WHERE owner = $1 AND digest = $2 FOR UPDATE`,
    /** $1 owner, $2 digest, $3 length, $4 now; nothing when this owner started the same upload this instant. */
    startUpload: `
      INSERT INTO ${uploads} (owner, digest, content, length, received, appended_at)
      VALUES ($1, $2, nextval('${contents.replaceAll("'", "''")}'), $3, 0, $4)
      ON CONFLICT (owner, digest) DO NOTHING
      RETURNING content, length, received`,
    /** Fills the last, short row: $1 content, $2 part, $3 bytes. */
    extendChunk: `UPDATE ${chunks} SET bytes = bytes || $3 WHERE content = $1 AND part = $2`,
    insertChunk: `INSERT INTO ${chunks} (content, part, bytes) VALUES ($1, $2, $3)`,
    advanceUpload: `UPDATE ${uploads} SET received = $3, appended_at = $4 WHERE owner = $1 AND digest = $2`,
    /** Rows [$2, $3) of content $1, in order. */
    chunkRows: `SELECT bytes FROM ${chunks} WHERE content = $1 AND part >= $2 AND part < $3 ORDER BY part`,
    /** Nothing when another owner stored the blob first (this waits for its transaction). */
    storeBlob: `
      INSERT INTO ${blobs} (digest, content, length, owner, stored_at) VALUES ($1, $2, $3, $4, $5)
      ON CONFLICT (digest) DO NOTHING
      RETURNING digest`,
    /** Removes the upload row; its chunks too unless $3 (they now belong to the blob). */
    endUpload: `
      WITH ended AS (
        DELETE FROM ${uploads} WHERE owner = $1 AND digest = $2 RETURNING content
      )
      DELETE FROM ${chunks} WHERE NOT $3::boolean AND content IN (SELECT content FROM ended)`,
    // Found, each is stored anew: a sweep's delete re-checks stored_at, so it cannot take one from under the push that asked.
    storedLengths: `UPDATE ${blobs} SET stored_at = greatest(stored_at, $2) WHERE digest = ANY($1::text[]) RETURNING digest, length`,
    blobContent: `SELECT content, length FROM ${blobs} WHERE digest = $1`,
    /** The bytes [$2, $3) of content $1, from rows $4 through $5: only the part of each row inside the range. */
    readRange: `
      SELECT substring(bytes FROM (greatest($2::bigint - part::bigint * ${CHUNK_BYTES}, 0) + 1)::int
                             FOR (least($3::bigint, (part::bigint + 1) * ${CHUNK_BYTES}) - greatest($2::bigint, part::bigint * ${CHUNK_BYTES}))::int) AS bytes
      FROM ${chunks} WHERE content = $1 AND part >= $4 AND part <= $5 ORDER BY part`,
    usage: `
      SELECT (SELECT coalesce(sum(length), 0) FROM ${blobs} WHERE owner = $1)
           + (SELECT coalesce(sum(u.received), 0) FROM ${uploads} u
              WHERE u.owner = $1 AND NOT EXISTS (SELECT 1 FROM ${blobs} b WHERE b.digest = u.digest)) AS bytes`,
    oldBlobs: `SELECT digest FROM ${blobs} WHERE stored_at < $1`,
    /** The blobs of $1 still stored before $2 (one confirmed meanwhile is kept), and their chunks. */
    removeBlobs: `
      WITH gone AS (
        DELETE FROM ${blobs} WHERE digest = ANY($1::text[]) AND stored_at < $2 RETURNING content
      ), gone_chunks AS (
        DELETE FROM ${chunks} WHERE content IN (SELECT content FROM gone)
      )
      SELECT count(*)::int AS n FROM gone`,
    removeIdleUploads: `
      WITH gone AS (
        DELETE FROM ${uploads} WHERE appended_at < $1 RETURNING content
      ), gone_chunks AS (
        DELETE FROM ${chunks} WHERE content IN (SELECT content FROM gone)
      )
      SELECT count(*)::int AS n FROM gone`,
  };
}

export type BlobStatements = ReturnType<typeof blobSql>;
