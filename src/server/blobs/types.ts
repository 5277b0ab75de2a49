/**
 * Where the server keeps attachment content: blobs addressed by the SHA-256
 * of their bytes, written in chunks and read in ranges, so that no file is
 * ever held whole in memory. `runBlobStoreConformance` (src/testing) proves
 * the contract for each implementation.
 *
 * A blob is written as an upload: chunks appended in order by one owner
 * (the user key, or the client id of a user without one). Uploads of the
 * same digest by different owners are kept apart, so that nobody can spoil
 * another's upload; the first to complete makes the blob, and every later
 * one of the same content completes at once. When the last byte arrives the
 * store checks the bytes against the digest: only content that matches its
 * address is ever readable.
 */

/** A digest: the SHA-256 of a blob's bytes, as 64 lowercase hex digits. */
export { DIGEST_PATTERN } from '../../shared/attachments.js';

/** Where an owner's upload of a digest stands. */
export interface UploadState {
  /** The blob is stored: nothing (more) to send. */
  complete: boolean;
  /** Bytes of this owner's upload stored so far (the blob's length when complete): the offset to go on from. */
  received: number;
}

/** Why an append was refused; `received` says where the upload stands. */
export class BlobWriteError extends Error {
  constructor(
    readonly reason: 'offset' | 'length' | 'digest',
    message: string,
    readonly received: number,
  ) {
    super(message);
    this.name = 'BlobWriteError';
  }
}

export interface SweepOptions {
  /**
   * Complete blobs stored before this time (ms since the epoch) and not
   * referenced are removed. A blob counts as stored anew whenever
   * `uploadState` or `append` answers complete for it, so that an uploader
   * told it is there has the same grace to push the document that names it,
   * and whenever `stored` finds it, so that a push accepted because its
   * blob is there does not lose it to a sweep under way.
   */
  blobsBefore: number;
  /** Uploads last appended to before this time are removed. */
  uploadsBefore: number;
}

export interface BlobStore {
  /** Creates tables or folders. Idempotent. */
  init(): Promise<void>;
  /** Where `owner`'s upload of `digest` stands (complete when the blob is stored, whoever wrote it). */
  uploadState(digest: string, owner: string): Promise<UploadState>;
  /**
   * Appends `bytes` at `offset` to `owner`'s upload of the blob `digest`,
   * `length` bytes long in all. Throws BlobWriteError 'offset' unless offset
   * is where the upload stands (nothing is written), 'length' when the bytes
   * would run past `length` or `length` differs from an earlier append's,
   * and 'digest' when the last byte arrives and the content does not match
   * the digest (the upload is removed). When the blob is already stored,
   * answers complete without writing. When the last byte arrives, the blob
   * becomes readable before this resolves. Appends to one upload are made
   * one after another; appends to different uploads may run at once.
   */
  append(digest: string, owner: string, length: number, offset: number, bytes: Uint8Array): Promise<UploadState>;
  /** Which of `digests` are stored, with their lengths; each found counts as stored anew (see SweepOptions). */
  stored(digests: readonly string[]): Promise<Map<string, number>>;
  /**
   * Up to `length` bytes of the stored blob `digest` from `offset` (fewer at
   * its end; none at or past it). Throws when the blob is not stored.
   */
  read(digest: string, offset: number, length: number): Promise<Uint8Array>;
  /** Bytes charged to `owner`: its stored blobs (those it completed first) and its unfinished uploads. */
  usage(owner: string): Promise<number>;
  /**
   * Removes stored blobs that `referenced` does not hold and that were
   * stored before `blobsBefore`, and uploads idle since before
   * `uploadsBefore`. Returns how many blobs and uploads it removed.
   */
  sweep(referenced: ReadonlySet<string>, options: SweepOptions): Promise<{ blobs: number; uploads: number }>;
  close(): Promise<void>;
}
