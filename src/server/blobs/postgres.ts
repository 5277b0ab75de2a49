import type pg from 'pg';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import { inTransaction, storageError } from '../storage/postgres/connection.js';
import { openPool, postgresOptionsSchema, type PostgresOptions } from '../storage/postgres/pool.js';
import { INIT_LOCK, lockId } from '../storage/postgres/schema.js';
import { CHUNK_BYTES, blobSql, type BlobStatements } from './postgres/sql.js';
import { BlobNotFoundError, assertAppend, assertDigest, assertOwner, checkAppend, digestMismatch, readWindow, sha256 } from './rules.js';
import { BlobWriteError, DIGEST_PATTERN, type BlobStore, type SweepOptions, type UploadState } from './types.js';

/** Chunk rows hashed per query when an upload completes: 2 MiB at a time, never the whole blob. */
const HASH_BATCH_ROWS = 8;
/** Digests removed per statement by sweep(). */
const SWEEP_BATCH = 500;

/** As PostgresSyncStorage's; the tables are <prefix>blobs, <prefix>blob_uploads and <prefix>blob_chunks. */
export type PostgresBlobStoreOptions = PostgresOptions;

interface UploadRow {
  content: string;
  length: string;
  received: string;
}

/**
 * Blobs in PostgreSQL, shared by every server on the database: content in
 * chunk rows (postgres/sql.ts), an upload's rows becoming the blob's when it
 * completes. Each append is one transaction holding the upload's row lock,
 * so appends to one upload never interleave, even from two servers; two
 * owners completing the same blob at once meet on its primary key, and the
 * second keeps the first's rows and drops its own.
 */
export class PostgresBlobStore implements BlobStore {
  private readonly pool: pg.Pool;
  private readonly ownsPool: boolean;
  private readonly sql: BlobStatements;
  private readonly schema: string;
  private readonly lockId: number;
  private initialized: Promise<void> | undefined;
  private closed = false;
  /** Calls under way, which close() waits for before it ends the pool. */
  private readonly running = new Set<Promise<unknown>>();

  constructor(options: PostgresBlobStoreOptions) {
    const parsed = parseOptions(postgresOptionsSchema, options, 'PostgresBlobStore');
    ({ pool: this.pool, owned: this.ownsPool } = openPool(parsed, 'PostgresBlobStore'));
    this.schema = parsed.schema;
    this.sql = blobSql(parsed.schema, parsed.tablePrefix);
    this.lockId = lockId(parsed.schema, `${parsed.tablePrefix}blobs`);
  }

  async init(): Promise<void> {
    await this.ready();
  }

  async uploadState(digest: string, owner: string): Promise<UploadState> {
    assertDigest(digest);
    assertOwner(owner);
    const stored = await this.confirmStored(digest, owner);
    if (stored) return stored;
    const result = await this.query<{ received: string }>('read upload state', this.sql.uploadReceived, [owner, digest]);
    return { complete: false, received: Number(result.rows[0]?.received ?? 0) };
  }

  async append(digest: string, owner: string, length: number, offset: number, bytes: Uint8Array): Promise<UploadState> {
    assertAppend(digest, owner, length, offset, bytes);
    const stored = await this.confirmStored(digest, owner);
    if (stored) return stored;
    const outcome = await this.transaction('append to an upload', (client) => this.appendIn(client, digest, owner, length, offset, bytes));
    if (outcome instanceof BlobWriteError) throw outcome;
    return outcome;
  }

  async stored(digests: readonly string[]): Promise<Map<string, number>> {
    const valid = [...new Set(digests)].filter((digest) => DIGEST_PATTERN.test(digest));
    if (valid.length === 0) return new Map();
    const result = await this.query<{ digest: string; length: string }>('read stored blobs', this.sql.storedLengths, [valid, Date.now()]);
    return new Map(result.rows.map((row) => [row.digest, Number(row.length)]));
  }

  async read(digest: string, offset: number, length: number): Promise<Uint8Array> {
    assertDigest(digest);
    const blob = (await this.query<{ content: string; length: string }>('read a blob', this.sql.blobContent, [digest])).rows[0];
    if (!blob) throw new BlobNotFoundError(digest);
    const { start, end } = readWindow(Number(blob.length), offset, length);
    if (start === end) return new Uint8Array(0);
    const rows = await this.query<{ bytes: Buffer }>('read a blob', this.sql.readRange, [
      blob.content,
      start,
      end,
      Math.floor(start / CHUNK_BYTES),
      Math.floor((end - 1) / CHUNK_BYTES),
    ]);
    const bytes = rows.rows.length === 1 ? rows.rows[0]!.bytes : Buffer.concat(rows.rows.map((row) => row.bytes));
    // The blob was swept between the two queries.
    if (bytes.length !== end - start) throw new BlobNotFoundError(digest);
    return bytes;
  }

  async usage(owner: string): Promise<number> {
    assertOwner(owner);
    const result = await this.query<{ bytes: string }>('read usage', this.sql.usage, [owner]);
    return Number(result.rows[0]!.bytes);
  }

  async sweep(referenced: ReadonlySet<string>, options: SweepOptions): Promise<{ blobs: number; uploads: number }> {
    const old = await this.query<{ digest: string }>('find old blobs', this.sql.oldBlobs, [options.blobsBefore]);
    const unreferenced = old.rows.map((row) => row.digest).filter((digest) => !referenced.has(digest));
    let blobs = 0;
    for (let i = 0; i < unreferenced.length; i += SWEEP_BATCH) {
      const batch = unreferenced.slice(i, i + SWEEP_BATCH);
      blobs += (await this.query<{ n: number }>('remove old blobs', this.sql.removeBlobs, [batch, options.blobsBefore])).rows[0]!.n;
    }
    const uploads = (await this.query<{ n: number }>('remove idle uploads', this.sql.removeIdleUploads, [options.uploadsBefore])).rows[0]!.n;
    return { blobs, uploads };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.running]); // calls under way are answered
    if (this.ownsPool) await this.pool.end();
  }

  /** The length of the stored blob (confirmed to this owner: see SweepOptions), or undefined. */
  private async confirmStored(digest: string, owner: string): Promise<UploadState | undefined> {
    const result = await this.query<{ length: string }>('read a blob', this.sql.confirmStored, [digest, owner, Date.now()]);
    const row = result.rows[0];
    return row && { complete: true, received: Number(row.length) };
  }

  /** One append, decided and written in one transaction; a refusal is returned so that what it removed is committed. */
  private async appendIn(client: pg.PoolClient, digest: string, owner: string, length: number, offset: number, bytes: Uint8Array): Promise<UploadState | BlobWriteError> {
    let upload = await this.lockUpload(client, owner, digest);
    const refusal = refusalOf(() => checkAppend(upload && { length: Number(upload.length), received: Number(upload.received) }, length, offset, bytes.length));
    if (refusal) return refusal;
    upload ??= await this.startUpload(client, owner, digest, length);
    // The same owner started it in another transaction this instant: appends to one upload come one at a time, so this is a caller's race.
    if (!upload) return new BlobWriteError('offset', `an upload of ${digest} by this owner started at the same time: ask where it stands`, 0);
    await this.writeChunks(client, upload.content, offset, bytes);
    const received = offset + bytes.length;
    await client.query(this.sql.advanceUpload, [owner, digest, received, Date.now()]);
    if (received < length) return { complete: false, received };

    if ((await this.hashOf(client, upload.content, length)) !== digest) {
      await client.query(this.sql.endUpload, [owner, digest, false]);
      return digestMismatch(digest);
    }
    const made = await client.query(this.sql.storeBlob, [digest, upload.content, length, owner, Date.now()]);
    // When another owner stored it first, this upload's rows are a second copy of the same bytes.
    await client.query(this.sql.endUpload, [owner, digest, made.rowCount === 1]);
    return { complete: true, received: length };
  }

  private async lockUpload(client: pg.PoolClient, owner: string, digest: string): Promise<UploadRow | undefined> {
    return (await client.query<UploadRow>(this.sql.lockUpload, [owner, digest])).rows[0];
  }

  /** The new upload's row; none when this owner started the same upload in another transaction at the same time. */
  private async startUpload(client: pg.PoolClient, owner: string, digest: string, length: number): Promise<UploadRow | undefined> {
    return (await client.query<UploadRow>(this.sql.startUpload, [owner, digest, length, Date.now()])).rows[0];
  }

  /** Writes `bytes` at `offset`: first into the last row while it is short, then in whole rows. */
  private async writeChunks(client: pg.PoolClient, content: string, offset: number, bytes: Uint8Array): Promise<void> {
    let at = 0;
    const filled = offset % CHUNK_BYTES;
    if (filled > 0 && bytes.length > 0) {
      at = Math.min(CHUNK_BYTES - filled, bytes.length);
      await client.query(this.sql.extendChunk, [content, Math.floor(offset / CHUNK_BYTES), bytes.subarray(0, at)]);
    }
    for (; at < bytes.length; at += CHUNK_BYTES) {
      const part = (offset + at) / CHUNK_BYTES; // whole: `at` ends the short row, or starts a full one
      await client.query(this.sql.insertChunk, [content, part, bytes.subarray(at, at + CHUNK_BYTES)]);
    }
  }

  /** The SHA-256 of the content's rows, read a few at a time in order. */
  private async hashOf(client: pg.PoolClient, content: string, length: number): Promise<string> {
    const hash = sha256();
    const parts = Math.ceil(length / CHUNK_BYTES);
    for (let part = 0; part < parts; part += HASH_BATCH_ROWS) {
      const rows = await client.query<{ bytes: Buffer }>(this.sql.chunkRows, [content, part, part + HASH_BATCH_ROWS]);
      for (const row of rows.rows) hash.update(row.bytes);
    }
    return hash.digest('hex');
  }

  /** Creates the tables once per instance; a failed attempt is retried by the next call. */
  private ready(): Promise<void> {
    if (this.closed) return Promise.reject(new SyncError('STORAGE_ERROR', 'PostgreSQL blob store is closed'));
    this.initialized ??= this.createTables().catch((error: unknown) => {
      this.initialized = undefined;
      throw error;
    });
    return this.initialized;
  }

  private async createTables(): Promise<void> {
    await inTransaction(this.pool, 'create blob tables', async (client) => {
      // CREATE ... IF NOT EXISTS races with itself when two servers start at once; the lock makes it one at a time.
      await client.query('SELECT pg_advisory_xact_lock($1, $2)', [INIT_LOCK, this.lockId]);
      const schemaExists = await client.query(this.sql.schemaExists, [this.schema]);
      // Only create a missing schema: CREATE SCHEMA checks privileges even when the schema exists.
      if (schemaExists.rowCount === 0) await client.query(this.sql.createSchema);
      const chunksExist = (await client.query<{ exists: boolean }>(this.sql.chunksExist)).rows[0]!.exists;
      await client.query(this.sql.createTables);
      // Altering takes the table's strongest lock: only when it was just made.
      if (!chunksExist) await client.query(this.sql.chunksStorage);
    });
  }

  private async transaction<T>(what: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    await this.ready();
    this.assertOpen();
    return this.track(inTransaction(this.pool, what, work));
  }

  private async query<R extends pg.QueryResultRow>(what: string, sql: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    await this.ready();
    this.assertOpen();
    try {
      return await this.track(this.pool.query<R>(sql, params));
    } catch (error) {
      throw storageError(`cannot ${what}`, error);
    }
  }

  private async track<T>(call: Promise<T>): Promise<T> {
    this.running.add(call);
    try {
      return await call;
    } finally {
      this.running.delete(call);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new SyncError('STORAGE_ERROR', 'PostgreSQL blob store is closed');
  }
}

/** The refusal `check` throws, returned instead, so that a transaction can commit what it did before it. */
function refusalOf(check: () => void): BlobWriteError | undefined {
  try {
    check();
    return undefined;
  } catch (error) {
    if (error instanceof BlobWriteError) return error;
    throw error;
  }
}
