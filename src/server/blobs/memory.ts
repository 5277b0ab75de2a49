import type { Hash } from 'node:crypto';
import { BlobNotFoundError, assertAppend, assertDigest, assertOwner, checkAppend, digestMismatch, readWindow, sha256 } from './rules.js';
import type { BlobStore, SweepOptions, UploadState } from './types.js';

/**
 * Bytes kept as the chunks they arrived in, never concatenated: `ends[i]`
 * is where chunk i ends, so a read finds its first chunk by binary search.
 */
class Chunks {
  readonly parts: Uint8Array[] = [];
  readonly ends: number[] = [];

  get length(): number {
    return this.ends.at(-1) ?? 0;
  }

  add(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.parts.push(bytes.slice()); // a copy: the caller may reuse its buffer
    this.ends.push(this.length + bytes.length);
  }

  read(start: number, end: number): Uint8Array {
    const out = new Uint8Array(end - start);
    for (let i = this.firstEndingAfter(start), at = start; at < end; i++) {
      const part = this.parts[i]!;
      const partStart = this.ends[i]! - part.length;
      const piece = part.subarray(at - partStart, Math.min(part.length, end - partStart));
      out.set(piece, at - start);
      at += piece.length;
    }
    return out;
  }

  private firstEndingAfter(offset: number): number {
    let low = 0;
    let high = this.ends.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.ends[middle]! <= offset) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}

interface Upload {
  length: number;
  chunks: Chunks;
  /** Fed as the bytes arrive, so completing needs no second pass over them. */
  hash: Hash;
  appendedAt: number;
}

interface Blob {
  chunks: Chunks;
  owner: string;
  storedAt: number;
}

/**
 * Keeps blobs in process memory: for tests, demos and a single short-lived
 * server. Every call decides and writes without awaiting in between, so
 * calls never interleave.
 */
export class MemoryBlobStore implements BlobStore {
  private readonly blobs = new Map<string, Blob>();
  /** owner → digest → upload. */
  private readonly uploads = new Map<string, Map<string, Upload>>();

  async init(): Promise<void> {}

  async uploadState(digest: string, owner: string): Promise<UploadState> {
    assertDigest(digest);
    assertOwner(owner);
    const blob = this.blobs.get(digest);
    if (blob) return this.confirmStored(digest, owner, blob);
    return { complete: false, received: this.uploads.get(owner)?.get(digest)?.chunks.length ?? 0 };
  }

  async append(digest: string, owner: string, length: number, offset: number, bytes: Uint8Array): Promise<UploadState> {
    assertAppend(digest, owner, length, offset, bytes);
    const blob = this.blobs.get(digest);
    if (blob) return this.confirmStored(digest, owner, blob);

    const existing = this.uploads.get(owner)?.get(digest);
    checkAppend(existing && { length: existing.length, received: existing.chunks.length }, length, offset, bytes.length);
    const upload = existing ?? this.startUpload(digest, owner, length);
    upload.chunks.add(bytes);
    upload.hash.update(bytes);
    upload.appendedAt = Date.now();
    if (upload.chunks.length < length) return { complete: false, received: upload.chunks.length };

    this.removeUpload(digest, owner);
    if (upload.hash.digest('hex') !== digest) throw digestMismatch(digest);
    this.blobs.set(digest, { chunks: upload.chunks, owner, storedAt: Date.now() });
    return { complete: true, received: length };
  }

  async stored(digests: readonly string[]): Promise<Map<string, number>> {
    const lengths = new Map<string, number>();
    const now = Date.now();
    for (const digest of digests) {
      const blob = this.blobs.get(digest);
      if (!blob) continue;
      blob.storedAt = Math.max(blob.storedAt, now);
      lengths.set(digest, blob.chunks.length);
    }
    return lengths;
  }

  async read(digest: string, offset: number, length: number): Promise<Uint8Array> {
    assertDigest(digest);
    const blob = this.blobs.get(digest);
    if (!blob) throw new BlobNotFoundError(digest);
    const { start, end } = readWindow(blob.chunks.length, offset, length);
    return blob.chunks.read(start, end);
  }

  async usage(owner: string): Promise<number> {
    let bytes = 0;
    for (const blob of this.blobs.values()) if (blob.owner === owner) bytes += blob.chunks.length;
    for (const [digest, upload] of this.uploads.get(owner) ?? []) {
      // An upload of a blob someone else stored is moot: it is removed when its owner next asks.
      if (!this.blobs.has(digest)) bytes += upload.chunks.length;
    }
    return bytes;
  }

  async sweep(referenced: ReadonlySet<string>, options: SweepOptions): Promise<{ blobs: number; uploads: number }> {
    let blobs = 0;
    let uploads = 0;
    for (const [digest, blob] of this.blobs) {
      if (blob.storedAt < options.blobsBefore && !referenced.has(digest)) {
        this.blobs.delete(digest);
        blobs++;
      }
    }
    for (const [owner, byDigest] of this.uploads) {
      for (const [digest, upload] of byDigest) {
        if (upload.appendedAt < options.uploadsBefore) {
          this.removeUpload(digest, owner);
          uploads++;
        }
      }
    }
    return { blobs, uploads };
  }

  async close(): Promise<void> {}

  /** The blob is stored: this owner's upload of it is moot, and the blob is young again (see SweepOptions). */
  private confirmStored(digest: string, owner: string, blob: Blob): UploadState {
    this.removeUpload(digest, owner);
    blob.storedAt = Math.max(blob.storedAt, Date.now());
    return { complete: true, received: blob.chunks.length };
  }

  private startUpload(digest: string, owner: string, length: number): Upload {
    const upload: Upload = { length, chunks: new Chunks(), hash: sha256(), appendedAt: Date.now() };
    let byDigest = this.uploads.get(owner);
    if (!byDigest) this.uploads.set(owner, (byDigest = new Map()));
    byDigest.set(digest, upload);
    return upload;
  }

  private removeUpload(digest: string, owner: string): void {
    const byDigest = this.uploads.get(owner);
    if (!byDigest?.delete(digest)) return;
    if (byDigest.size === 0) this.uploads.delete(owner);
  }
}
