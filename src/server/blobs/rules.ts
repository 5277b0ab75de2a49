/**
 * What every BlobStore decides the same way: which arguments it takes, when
 * an append is refused, and which bytes a read answers. The stores only do
 * the storing.
 */
import { createHash, type Hash } from 'node:crypto';
import { BlobWriteError, DIGEST_PATTERN } from './types.js';

/** A read of a blob that is not stored (never stored, swept, or still an upload). */
export class BlobNotFoundError extends Error {
  constructor(readonly digest: string) {
    super(`blob ${digest} is not stored`);
    this.name = 'BlobNotFoundError';
  }
}

/** Digests become file names and keys, so anything else is refused before it reaches storage. */
export function assertDigest(digest: string): void {
  if (typeof digest !== 'string' || !DIGEST_PATTERN.test(digest)) {
    throw new RangeError(`a blob digest is 64 lowercase hex digits (the SHA-256 of the content), got ${JSON.stringify(String(digest)).slice(0, 80)}`);
  }
}

export function assertOwner(owner: string): void {
  if (typeof owner !== 'string' || owner.length === 0) throw new RangeError('a blob upload needs an owner: a non-empty string');
}

function assertCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${String(value)}`);
}

/** Checks the arguments of `append` (not yet against the upload). */
export function assertAppend(digest: string, owner: string, length: number, offset: number, bytes: Uint8Array): void {
  assertDigest(digest);
  assertOwner(owner);
  assertCount('length', length);
  assertCount('offset', offset);
  if (!(bytes instanceof Uint8Array)) throw new TypeError('append takes its bytes as a Uint8Array');
}

/** Where an upload stands, as far as the append rules need to know. */
export interface UploadSoFar {
  /** The total length the first append declared. */
  length: number;
  received: number;
}

/**
 * Refuses an append that does not continue `upload` (undefined when this
 * owner has none: it starts at 0): a length that differs from the first
 * append's, an offset other than where it stands, bytes past the end.
 */
export function checkAppend(upload: UploadSoFar | undefined, length: number, offset: number, size: number): void {
  const received = upload?.received ?? 0;
  if (upload && upload.length !== length) {
    throw new BlobWriteError('length', `this upload is ${upload.length} bytes long, not ${length}`, received);
  }
  if (offset !== received) {
    throw new BlobWriteError('offset', `the upload stands at ${received} bytes, not ${offset}: go on from there`, received);
  }
  if (offset + size > length) {
    throw new BlobWriteError('length', `${size} bytes at ${offset} run past the blob's ${length} bytes`, received);
  }
}

export function digestMismatch(digest: string): BlobWriteError {
  return new BlobWriteError('digest', `the uploaded bytes do not hash to ${digest}: the upload is removed, send it again from 0`, 0);
}

/** The bytes [start, end) of a blob `blobLength` long that a read of `length` bytes at `offset` answers. */
export function readWindow(blobLength: number, offset: number, length: number): { start: number; end: number } {
  assertCount('offset', offset);
  assertCount('length', length);
  const start = Math.min(offset, blobLength);
  return { start, end: Math.min(blobLength, start + length) };
}

export const sha256 = (): Hash => createHash('sha256');
