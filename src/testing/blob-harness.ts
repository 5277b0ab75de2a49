/** What every part of the BlobStore conformance suite shares: the store under test, content made to order, uploads. */
import { createHash } from 'node:crypto';
import { expect } from 'vitest';
import { BlobWriteError, type BlobStore, type UploadState } from '../server/blobs/types.js';

/** What a store author's setup gives the suite, once per test. */
export interface BlobStoreUnderTest {
  /** A new, empty store; the suite calls init() on it. */
  store: BlobStore;
  /** Closes whatever instances are open and removes their data. Without it, the suite closes the store it used last. */
  cleanup?(): Promise<void>;
  /** For durable stores: after the suite closed the last instance, opens a new one over the same data. */
  reopen?(): Promise<BlobStore>;
}

/** What each part of the suite is given: the store of the running test. */
export interface BlobConformance {
  /** The store of the running test, initialized; reopen() replaces it. */
  readonly store: BlobStore;
  /** Whether the setup can reopen a store over the same data. */
  readonly durable: boolean;
  /** Closes the running test's store and opens, and initializes, a new one over the same data. */
  reopen(): Promise<BlobStore>;
}

export const KiB = 1024;
export const MiB = 1024 * KiB;

let madeContents = 0;
/**
 * `length` bytes that no other call in this run makes (unless `seed` is
 * given, which repeats them): a different blob each time, made fast
 * (xorshift32, four bytes a step) and the same on every run.
 */
export function contentOf(length: number, seed = 0x9e37_79b9 + ++madeContents * 7919): Uint8Array {
  const bytes = new Uint8Array(length);
  const words = new Uint32Array(bytes.buffer, 0, length >>> 2);
  let state = seed >>> 0 || 1;
  const next = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return state >>> 0;
  };
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length * 4; i < length; i++) bytes[i] = next() & 0xff;
  return bytes;
}

export const digestOf = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** The appends `bytes` is cut into from `from` on: at every multiple of `cuts`, or at the offsets it lists. */
export function pieces(bytes: Uint8Array, cuts: number | readonly number[], from = 0): { offset: number; bytes: Uint8Array }[] {
  const at = typeof cuts === 'number' ? Array.from({ length: Math.ceil(bytes.length / cuts) }, (_, i) => i * cuts) : cuts;
  const starts = [...new Set([from, ...at.filter((offset) => offset > from && offset < bytes.length)])].sort((a, b) => a - b);
  return starts.map((offset, i) => ({ offset, bytes: bytes.subarray(offset, starts[i + 1] ?? bytes.length) }));
}

/**
 * Appends `bytes` as `owner`, cut at `cuts`, from `from` on; stops when the
 * store answers complete (someone stored the blob). Checks each answer, and
 * returns the last.
 */
export async function upload(store: BlobStore, owner: string, bytes: Uint8Array, cuts: number | readonly number[] = 256 * KiB, from = 0): Promise<UploadState> {
  const digest = digestOf(bytes);
  let state: UploadState = { complete: false, received: from };
  for (const piece of pieces(bytes, cuts, from)) {
    state = await store.append(digest, owner, bytes.length, piece.offset, piece.bytes);
    if (state.complete) {
      expect(state.received).toBe(bytes.length);
      return state;
    }
    expect(state.received).toBe(piece.offset + piece.bytes.length);
  }
  return state;
}

/** The whole blob, read `step` bytes at a time. */
export async function readAll(store: BlobStore, digest: string, step = MiB): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for (let offset = 0; ; offset += step) {
    const part = await store.read(digest, offset, step);
    expect(part.length).toBeLessThanOrEqual(step);
    if (part.length === 0) return Buffer.concat(parts);
    parts.push(part);
  }
}

/** Byte-exact comparison that prints a short message, not two megabyte arrays. */
export function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length, 'length').toBe(expected.length);
  const differs = Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length));
  if (differs !== 0) {
    const first = actual.findIndex((byte, i) => byte !== expected[i]);
    expect.fail(`the bytes differ, first at ${first} of ${expected.length}`);
  }
}

export async function expectRefused(call: Promise<unknown>, reason: BlobWriteError['reason'], received: number): Promise<void> {
  const error = await call.then(
    () => expect.fail(`expected a BlobWriteError '${reason}', but the append succeeded`),
    (thrown: unknown) => thrown,
  );
  expect(error).toBeInstanceOf(BlobWriteError);
  expect(error).toMatchObject({ reason, received });
}

/** Waits until Date.now() has moved past its value now, and returns it: a time that everything before this call was stored before. */
export async function nextMillisecond(): Promise<number> {
  const now = Date.now();
  while (Date.now() <= now) await new Promise((resolve) => setImmediate(resolve));
  return Date.now();
}
