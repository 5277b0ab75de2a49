import { mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { FileBlobStore, MemoryBlobStore, PostgresBlobStore, type BlobStore } from '../src/server/blobs/index.js';
import { CHUNK_BYTES } from '../src/server/blobs/postgres/sql.js';
import { KiB, contentOf, digestOf, expectBytes, readAll, upload } from '../src/testing/blob-harness.js';
import { runBlobStoreConformance } from '../src/testing/index.js';
import { serviceReady, useTestDatabase } from './services.js';

/** Every instance opened over the same data, so cleanup closes the reopened ones too. */
function durable(open: () => BlobStore, removeData: () => Promise<void>) {
  const instances = [open()];
  return {
    store: instances[0]!,
    reopen: async () => {
      const store = open();
      instances.push(store);
      return store;
    },
    cleanup: async () => {
      await Promise.all(instances.map((store) => store.close()));
      await removeData();
    },
  };
}

/** Two servers over the same data, as `serve --workers` runs them. */
async function withTwo(open: () => BlobStore, test: (a: BlobStore, b: BlobStore) => Promise<void>): Promise<void> {
  const stores = [open(), open()] as const;
  try {
    await Promise.all(stores.map((store) => store.init()));
    await test(...stores);
  } finally {
    await Promise.all(stores.map((store) => store.close()));
  }
}

/** Every file under `directory`, as paths relative to it. */
function filesUnder(directory: string): string[] {
  return readdirSync(directory, { recursive: true, encoding: 'utf8' }).filter((path) => statSync(join(directory, path)).isFile());
}

runBlobStoreConformance('memory', () => ({ store: new MemoryBlobStore() }));

const tempDirectory = () => mkdtempSync(join(tmpdir(), 'rxos-blobs-'));

runBlobStoreConformance('files', () => {
  const directory = tempDirectory();
  return durable(
    () => new FileBlobStore({ directory: join(directory, 'not-yet-created') }), // the store creates a missing folder
    async () => rmSync(directory, { recursive: true, force: true }),
  );
});

/** A FileBlobStore in a new temporary folder, closed and removed after `test`. */
async function withFileStore(test: (store: FileBlobStore, directory: string) => Promise<void>): Promise<void> {
  const directory = tempDirectory();
  const store = new FileBlobStore({ directory });
  try {
    await test(store, directory);
  } finally {
    await store.close();
    rmSync(directory, { recursive: true, force: true });
  }
}

describe('files', () => {
  it('completes one blob uploaded by two owners through two servers sharing the folder, both at once', async () => {
    const directory = tempDirectory();
    try {
      await withTwo(
        () => new FileBlobStore({ directory }),
        async (a, b) => {
          const bytes = contentOf(900 * KiB);
          const states = await Promise.all([upload(a, 'alice', bytes, 100 * KiB), upload(b, 'bob', bytes, 100 * KiB)]);
          expect(states.every((state) => state.complete)).toBe(true);
          expectBytes(await readAll(b, digestOf(bytes)), bytes);
          expect((await a.usage('alice')) + (await b.usage('bob'))).toBe(bytes.length);
          // Nothing is left but the blob, its mark and one charge.
          const files = filesUnder(directory).map((path) => path.replace(/[0-9a-f]{64}/g, 'H').replace(/^blobs\/[0-9a-f]{2}\//, 'blobs/S/'));
          expect(files.sort()).toEqual(['blobs/S/H', 'blobs/S/H.owner', `owners/H/stored/H.${bytes.length}`]);
        },
      );
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it('names no file after an owner: owners are hashed, so no owner string reaches a path', async () => {
    await withFileStore(async (store, directory) => {
        const owners = ['../../escape', 'user@example.com', 'ü/ñ'];
        for (const owner of owners) {
          await upload(store, owner, contentOf(3 * KiB));
          await store.append(digestOf(contentOf(4 * KiB)), owner, 4 * KiB, 0, new Uint8Array(KiB));
        }
        const paths = filesUnder(directory);
        expect(paths.length).toBeGreaterThan(0);
        for (const path of paths) expect(path).toMatch(/^(blobs\/[0-9a-f]{2}\/[0-9a-f]{64}(\.owner)?|owners\/[0-9a-f]{64}\/(stored|uploads)\/[0-9a-f]{64}\.\d+)$/);
    });
  });

  it('completes an upload whose every byte arrived before the server stopped, when it is next asked about', async () => {
    await withFileStore(async (store, directory) => {
        await store.init();
        const bytes = contentOf(5 * KiB);
        const digest = digestOf(bytes);
        // What a server leaves when it stops between the last write and the check.
        expect(await store.append(digest, 'alice', bytes.length, 0, bytes.subarray(0, KiB))).toEqual({ complete: false, received: KiB });
        const uploadsDir = join(directory, 'owners');
        const [ownerDir] = readdirSync(uploadsDir);
        await writeFile(join(uploadsDir, ownerDir!, 'uploads', `${digest}.${bytes.length}`), bytes);
        expect(await store.uploadState(digest, 'alice')).toEqual({ complete: true, received: bytes.length });
        expectBytes(await store.read(digest, 0, bytes.length), bytes);

        // And a full upload that does not match is dropped, not stored.
        const other = contentOf(2 * KiB);
        await store.append(digestOf(other), 'alice', other.length, 0, other.subarray(0, 10));
        await mkdir(join(uploadsDir, ownerDir!, 'uploads'), { recursive: true });
        await writeFile(join(uploadsDir, ownerDir!, 'uploads', `${digestOf(other)}.${other.length}`), contentOf(other.length));
        expect(await store.uploadState(digestOf(other), 'alice')).toEqual({ complete: false, received: 0 });
        expect(await store.stored([digestOf(other)])).toEqual(new Map());
    });
  });

  it('puts back a blob that a sweep set aside and did not finish with, however old, before it judges marks', async () => {
    await withFileStore(async (store, directory) => {
        await store.init();
        const bytes = contentOf(4 * KiB);
        const digest = digestOf(bytes);
        await upload(store, 'alice', bytes);
        // What a sweep that crashed between its rename and its judgement leaves: a push may have found the
        // blob stored and stored the document that names it just before.
        const shard = join(directory, 'blobs', digest.slice(0, 2));
        renameSync(join(shard, digest), join(shard, `${digest}.sweeping-crashed`));
        const later = Date.now() + 60_000;
        expect(await store.sweep(new Set([digest]), { blobsBefore: later, uploadsBefore: later })).toEqual({ blobs: 0, uploads: 0 });
        expectBytes(await store.read(digest, 0, bytes.length), bytes);
        expect(await store.usage('alice')).toBe(bytes.length);
        expect(readdirSync(shard).filter((name) => name.includes('.sweeping-'))).toEqual([]);
    });
  });

  it('refuses an unusable directory option, naming it', () => {
    expect(() => new FileBlobStore({ directory: '' })).toThrow(/directory/);
    expect(() => new FileBlobStore({} as never)).toThrow(/directory/);
  });
});

const postgresReady = await serviceReady('postgres');

describe.skipIf(!postgresReady)('postgres', () => {
  const database = useTestDatabase();
  runBlobStoreConformance('postgres', () => {
    const schema = database.freshSchema('blobs'); // a fresh schema per test: same server, no shared state
    return durable(() => new PostgresBlobStore({ connectionString: database.connectionString, schema, poolSize: 4 }), async () => {});
  });

  it('completes one blob uploaded by two owners through two servers at once, keeping one copy of its rows', async () => {
    const schema = database.freshSchema('two_servers');
    await withTwo(
      () => new PostgresBlobStore({ connectionString: database.connectionString, schema, poolSize: 3 }),
      async (a, b) => {
        const bytes = contentOf(3 * CHUNK_BYTES + 1000);
        const digest = digestOf(bytes);
        const last = 3 * CHUNK_BYTES;
        // Both send all but the last bytes side by side, then the last together.
        const sending = [[a, 'alice'], [b, 'bob']] as const;
        for (let offset = 0; offset < last; offset += CHUNK_BYTES) {
          await Promise.all(sending.map(([store, owner]) => store.append(digest, owner, bytes.length, offset, bytes.subarray(offset, offset + CHUNK_BYTES))));
        }
        const ends = await Promise.all(sending.map(([store, owner]) => store.append(digest, owner, bytes.length, last, bytes.subarray(last))));
        expect(ends).toEqual([{ complete: true, received: bytes.length }, { complete: true, received: bytes.length }]);
        expectBytes(await readAll(a, digest), bytes);

        const client = new pg.Client({ connectionString: database.connectionString });
        await client.connect();
        try {
          const rows = await client.query<{ n: string; longest: number }>(`SELECT count(*) AS n, max(octet_length(bytes)) AS longest FROM "${schema}".sync_blob_chunks`);
          // The blob's four rows, none longer than CHUNK_BYTES, and no second copy.
          expect(rows.rows[0]).toEqual({ n: '4', longest: CHUNK_BYTES });
          expect((await client.query(`SELECT 1 FROM "${schema}".sync_blob_uploads`)).rowCount).toBe(0);
        } finally {
          await client.end();
        }
      },
    );
  });

  it('refuses unsafe schema and prefix names, and a missing connection', () => {
    const { connectionString } = database;
    expect(() => new PostgresBlobStore({ connectionString, schema: 'x"; DROP' })).toThrow(/schema/);
    expect(() => new PostgresBlobStore({ connectionString, tablePrefix: 'a-b' })).toThrow(/tablePrefix/);
    expect(() => new PostgresBlobStore({} as never)).toThrow(/connectionString and pool/);
  });
});
