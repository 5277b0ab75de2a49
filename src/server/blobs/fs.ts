import { createHash, randomUUID } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { SyncError } from '../../shared/errors.js';
import { parseOptions } from '../../shared/json.js';
import { BlobNotFoundError, assertAppend, assertDigest, assertOwner, checkAppend, digestMismatch, readWindow, sha256 } from './rules.js';
import { BlobWriteError, DIGEST_PATTERN, type BlobStore, type SweepOptions, type UploadState } from './types.js';

const optionsSchema = z.strictObject({
  /** The folder the blobs are kept in; created when missing. Several servers may share it. */
  directory: z.string().min(1),
});
export type FileBlobStoreOptions = z.input<typeof optionsSchema>;

/** An upload's file: its digest and the length its first append declared. */
const UPLOAD_NAME = /^([0-9a-f]{64})\.(\d+)$/;
/** How much of a file is hashed at a time. */
const HASH_BUFFER_BYTES = 1 << 20;

/** Owners become folder names only as the SHA-256 of the string, so no owner can name a path. */
const ownerKey = (owner: string) => createHash('sha256').update(owner).digest('hex');

/** In the name of a blob a sweep set aside (see removeBlobIfBefore). */
const SWEEPING = '.sweeping-';

/**
 * Blobs as files in one folder, which the servers of `serve --workers` may
 * share:
 *
 *     blobs/<first two digits>/<digest>         the content, complete and checked
 *     blobs/<first two digits>/<digest>.owner   the key of the owner it is charged to
 *     owners/<key>/stored/<digest>.<length>     an empty file: that owner's charge, for usage()
 *     owners/<key>/uploads/<digest>.<length>    an upload under way (its size is what arrived)
 *
 * where <key> is the SHA-256 of the owner. A file's time is when it was
 * stored or last appended to. A complete upload is first renamed to a name
 * of its own (so nobody else completes it too), hashed, synced, and then
 * renamed into blobs/: a blob file is never seen half written, and renaming
 * onto a blob another server just stored replaces it with the same bytes.
 */
export class FileBlobStore implements BlobStore {
  private readonly directory: string;
  private initialized: Promise<void> | undefined;
  private closed = false;

  constructor(options: FileBlobStoreOptions) {
    this.directory = parseOptions(optionsSchema, options, 'FileBlobStore').directory;
  }

  async init(): Promise<void> {
    await this.ready();
  }

  async uploadState(digest: string, owner: string): Promise<UploadState> {
    assertDigest(digest);
    assertOwner(owner);
    await this.ready();
    const key = ownerKey(owner);
    const length = await this.storedLength(digest);
    if (length !== undefined) return this.confirmStored(digest, key, length);
    const upload = await this.findUpload(key, digest);
    if (!upload) return { complete: false, received: 0 };
    if (upload.received < upload.length) return { complete: false, received: upload.received };
    // Every byte arrived but the server stopped before completing: complete it now.
    try {
      return await this.complete(digest, key, upload.path, upload.length);
    } catch (error) {
      if (error instanceof BlobWriteError) return { complete: false, received: 0 };
      throw error;
    }
  }

  async append(digest: string, owner: string, length: number, offset: number, bytes: Uint8Array): Promise<UploadState> {
    assertAppend(digest, owner, length, offset, bytes);
    await this.ready();
    const key = ownerKey(owner);
    const storedLength = await this.storedLength(digest);
    if (storedLength !== undefined) return this.confirmStored(digest, key, storedLength);

    const path = this.uploadPath(key, digest, length);
    let handle = await openExisting(path, constants.O_RDWR);
    if (!handle) {
      // No upload of this length: refuse before creating one if there is one of another length, or the offset is not 0.
      checkAppend(await this.findUpload(key, digest), length, offset, bytes.length);
      await mkdir(dirname(path), { recursive: true });
      handle = await open(path, constants.O_RDWR | constants.O_CREAT);
    }
    try {
      checkAppend({ length, received: (await handle.stat()).size }, length, offset, bytes.length);
      await writeAt(handle, bytes, offset);
      await touch(handle); // the upload's idle time, on the clock sweep() is given times of
    } finally {
      await handle.close();
    }
    const received = offset + bytes.length;
    if (received < length) return { complete: false, received };
    return this.complete(digest, key, path, length);
  }

  async stored(digests: readonly string[]): Promise<Map<string, number>> {
    await this.ready();
    const lengths = new Map<string, number>();
    for (const digest of new Set(digests)) {
      if (!DIGEST_PATTERN.test(digest)) continue;
      const length = await this.storedLength(digest);
      // Gone this instant (set aside by a sweep, see removeBlobIfBefore): not stored.
      if (length !== undefined && (await this.storedAnew(digest))) lengths.set(digest, length);
    }
    return lengths;
  }

  async read(digest: string, offset: number, length: number): Promise<Uint8Array> {
    assertDigest(digest);
    await this.ready();
    const handle = await openExisting(this.blobPath(digest), constants.O_RDONLY);
    if (!handle) throw new BlobNotFoundError(digest);
    try {
      const { start, end } = readWindow((await handle.stat()).size, offset, length);
      const bytes = Buffer.alloc(end - start);
      for (let at = 0; at < bytes.length; ) {
        const { bytesRead } = await handle.read(bytes, at, bytes.length - at, start + at);
        if (bytesRead === 0) throw new SyncError('STORAGE_ERROR', `blob ${digest} ended at ${start + at} bytes while being read`);
        at += bytesRead;
      }
      return bytes;
    } finally {
      await handle.close();
    }
  }

  /** One listing of the owner's charges (their names carry the lengths) and one of its uploads. */
  async usage(owner: string): Promise<number> {
    assertOwner(owner);
    await this.ready();
    const key = ownerKey(owner);
    let bytes = 0;
    for (const name of await list(this.ownedDir(key))) {
      const charge = UPLOAD_NAME.exec(name);
      if (charge) bytes += Number(charge[2]);
    }
    for (const name of await list(this.uploadsDir(key))) {
      const upload = UPLOAD_NAME.exec(name);
      // An upload of a blob someone else stored is moot: it is removed when its owner next asks.
      if (!upload || (await this.storedLength(upload[1]!)) !== undefined) continue;
      bytes += (await statIfExists(join(this.uploadsDir(key), name)))?.size ?? 0;
    }
    return bytes;
  }

  async sweep(referenced: ReadonlySet<string>, options: SweepOptions): Promise<{ blobs: number; uploads: number }> {
    await this.ready();
    let blobs = 0;
    for (const shard of await list(join(this.directory, 'blobs'))) {
      const names = await list(join(this.directory, 'blobs', shard));
      // First, before any mark is judged stray: blobs a sweep that stopped (a crash) left set aside.
      for (const name of names) if (name.includes(SWEEPING)) await this.restoreAside(join(this.directory, 'blobs', shard, name));
      for (const name of names) {
        if (DIGEST_PATTERN.test(name)) {
          if (!referenced.has(name) && (await this.removeBlobIfBefore(name, options.blobsBefore))) blobs++;
        } else if (name.endsWith('.owner')) {
          await this.removeStrayMark(name.slice(0, -'.owner'.length), options.blobsBefore);
        }
      }
    }
    let uploads = 0;
    for (const key of await list(join(this.directory, 'owners'))) {
      for (const name of await list(this.uploadsDir(key))) {
        const path = join(this.uploadsDir(key), name);
        const stats = await statIfExists(path);
        if (!stats || timeOf(stats) >= options.uploadsBefore) continue;
        await rm(path, { force: true });
        uploads++;
      }
    }
    return { blobs, uploads };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private ready(): Promise<void> {
    if (this.closed) return Promise.reject(new SyncError('STORAGE_ERROR', `FileBlobStore(${this.directory}) is closed`));
    this.initialized ??= (async () => {
      await mkdir(join(this.directory, 'blobs'), { recursive: true });
      await mkdir(join(this.directory, 'owners'), { recursive: true });
    })().catch((error: unknown) => {
      this.initialized = undefined;
      throw error;
    });
    return this.initialized;
  }

  /**
   * Takes the upload out of its owner's hands (a rename), checks it against
   * the digest, syncs it, and renames it into blobs/. Charges the owner when
   * nobody was charged for the blob before.
   */
  private async complete(digest: string, key: string, path: string, length: number): Promise<UploadState> {
    const claimed = `${path}.${randomUUID()}.completing`;
    try {
      await rename(path, claimed);
    } catch (error) {
      if (!isMissing(error)) throw error;
      // Another server is completing this same upload: its answer is the one that stands.
      const stored = await this.storedLength(digest);
      return stored === undefined ? { complete: false, received: 0 } : { complete: true, received: stored };
    }
    const handle = await open(claimed, constants.O_RDONLY);
    let matches: boolean;
    try {
      matches = (await hashOf(handle)) === digest;
      if (matches) {
        await handle.sync(); // the bytes are on disk before the name says the blob is there
        await touch(handle); // its store time
      }
    } finally {
      await handle.close();
    }
    if (!matches) {
      await rm(claimed, { force: true });
      throw digestMismatch(digest);
    }
    const target = this.blobPath(digest);
    await mkdir(dirname(target), { recursive: true });
    await rename(claimed, target);
    await syncDirectory(dirname(target));
    await this.charge(digest, key, length);
    return { complete: true, received: length };
  }

  /** The mark, made exclusively, decides who was first; the charge under owners/ is what usage() reads. */
  private async charge(digest: string, key: string, length: number): Promise<void> {
    try {
      await writeFile(`${this.blobPath(digest)}.owner`, key, { flag: 'wx' });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw error;
    }
    await mkdir(this.ownedDir(key), { recursive: true });
    await writeFile(join(this.ownedDir(key), `${digest}.${length}`), '');
  }

  /** The blob is stored: this owner's upload of it is moot, and the blob is young again (see SweepOptions). */
  private async confirmStored(digest: string, key: string, length: number): Promise<UploadState> {
    // Swept this instant: the answer below is what the caller saw first.
    await this.storedAnew(digest);
    for (const name of await list(this.uploadsDir(key))) {
      if (UPLOAD_NAME.exec(name)?.[1] === digest) await rm(join(this.uploadsDir(key), name), { force: true });
    }
    return { complete: true, received: length };
  }

  /** Makes the blob young again (see SweepOptions); false when it is not there. */
  private async storedAnew(digest: string): Promise<boolean> {
    const now = new Date();
    try {
      await utimes(this.blobPath(digest), now, now);
      return true;
    } catch (error) {
      if (isMissing(error)) return false;
      throw error;
    }
  }

  /**
   * Removes the blob when it was stored before `before`. Set aside by a
   * rename first, then judged again: a push that found it stored (see
   * stored()) made it young before the rename, and it is put back; one that
   * looks after the rename does not find it, and its client uploads it again.
   * Judged by a stat alone, a blob found by a push between the stat and the
   * removal was lost under the document the push had just stored. Its charge
   * goes first and its mark next, so that a crash in between leaves at worst
   * a blob charged to nobody (a crash while it is aside: see restoreAside).
   */
  private async removeBlobIfBefore(digest: string, before: number): Promise<boolean> {
    const path = this.blobPath(digest);
    const stats = await statIfExists(path);
    if (!stats || timeOf(stats) >= before) return false;
    const aside = `${path}${SWEEPING}${randomUUID()}`;
    try {
      await rename(path, aside);
    } catch (error) {
      if (isMissing(error)) return false;
      throw error;
    }
    const judged = await statIfExists(aside);
    // Put back by another server's sweep (see restoreAside): not this one's to judge.
    if (!judged) return false;
    if (timeOf(judged) >= before) {
      // The same content, whoever stored it again meanwhile: the rename back replaces it with itself.
      await renameUnlessMissing(aside, path);
      return false;
    }
    await rm(aside, { force: true });
    // Completed again by an upload meanwhile: its mark and charge stand for the blob that is back.
    if ((await this.storedLength(digest)) !== undefined) return true;
    const key = await readFile(`${path}.owner`, 'utf8').catch(() => undefined);
    if (key && DIGEST_PATTERN.test(key)) await rm(join(this.ownedDir(key), `${digest}.${stats.size}`), { force: true });
    await rm(`${path}.owner`, { force: true });
    return true;
  }

  /**
   * A blob a sweep set aside and did not finish with (it crashed, or runs on
   * another server this instant): put back where no blob is, else dropped
   * (the same content is there). Put back whatever its age: a push may have
   * found it stored, and stored its document, just before the rename; a
   * blob nobody names is judged again by the next sweep.
   */
  private async restoreAside(aside: string): Promise<void> {
    const path = aside.slice(0, aside.indexOf(SWEEPING));
    if (!DIGEST_PATTERN.test(basename(path))) return;
    if (await statIfExists(path)) await rm(aside, { force: true });
    else await renameUnlessMissing(aside, path);
  }

  /** A mark whose blob is gone (a crash while sweeping): removed with any charge it names. */
  private async removeStrayMark(digest: string, before: number): Promise<void> {
    if (!DIGEST_PATTERN.test(digest) || (await this.storedLength(digest)) !== undefined) return;
    const mark = `${this.blobPath(digest)}.owner`;
    const stats = await statIfExists(mark);
    if (!stats || timeOf(stats) >= before) return;
    const key = await readFile(mark, 'utf8').catch(() => undefined);
    if (key && DIGEST_PATTERN.test(key)) {
      for (const name of await list(this.ownedDir(key))) {
        if (UPLOAD_NAME.exec(name)?.[1] === digest) await rm(join(this.ownedDir(key), name), { force: true });
      }
    }
    await rm(mark, { force: true });
  }

  private async storedLength(digest: string): Promise<number | undefined> {
    return (await statIfExists(this.blobPath(digest)))?.size;
  }

  /** The owner's upload of `digest`, whatever length it declared. */
  private async findUpload(key: string, digest: string): Promise<{ path: string; length: number; received: number } | undefined> {
    for (const name of await list(this.uploadsDir(key))) {
      const match = UPLOAD_NAME.exec(name);
      if (match?.[1] !== digest) continue;
      const path = join(this.uploadsDir(key), name);
      const stats = await statIfExists(path);
      if (stats) return { path, length: Number(match[2]), received: stats.size };
    }
    return undefined;
  }

  private blobPath(digest: string): string {
    return join(this.directory, 'blobs', digest.slice(0, 2), digest);
  }

  private ownedDir(key: string): string {
    return join(this.directory, 'owners', key, 'stored');
  }

  private uploadsDir(key: string): string {
    return join(this.directory, 'owners', key, 'uploads');
  }

  private uploadPath(key: string, digest: string, length: number): string {
    return join(this.uploadsDir(key), `${digest}.${length}`);
  }
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

async function openExisting(path: string, flags: number): Promise<FileHandle | undefined> {
  try {
    return await open(path, flags);
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

/** Renames `from` to `to`; nothing when `from` is gone (another process moved or removed it first). */
async function renameUnlessMissing(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (error) {
    if (!isMissing(error)) throw error;
  }
}

async function statIfExists(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

async function list(directory: string): Promise<string[]> {
  try {
    return await readdir(directory);
  } catch (error) {
    if (isMissing(error)) return [];
    throw error;
  }
}

/** A file's time in whole ms: set from Date.now(), read back through a float of seconds. */
const timeOf = (stats: Stats) => Math.round(stats.mtimeMs);

/** Sets the file's time from Date.now(), the clock sweep() times come from (the kernel's file clock may lag it). */
async function touch(handle: FileHandle): Promise<void> {
  const now = new Date();
  await handle.utimes(now, now);
}

async function writeAt(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let at = 0; at < bytes.length; ) {
    const { bytesWritten } = await handle.write(bytes, at, bytes.length - at, position + at);
    at += bytesWritten;
  }
}

async function hashOf(handle: FileHandle): Promise<string> {
  const hash = sha256();
  const buffer = Buffer.alloc(HASH_BUFFER_BYTES);
  for (let position = 0; ; ) {
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
    if (bytesRead === 0) return hash.digest('hex');
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
}

/** Makes a rename in `directory` survive a crash. Some platforms cannot sync a folder; there the rename is as durable as they make it. */
async function syncDirectory(directory: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(directory, constants.O_RDONLY);
    await handle.sync();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EBADF') throw error;
  } finally {
    await handle?.close();
  }
}
