/** Writing and reading one blob: chunks in order, refusals that write nothing, resuming, checking, ranges. */
import fc from 'fast-check';
import { beforeEach, expect, it } from 'vitest';
import type { BlobStore } from '../../server/blobs/types.js';
import { KiB, MiB, contentOf, digestOf, expectBytes, expectRefused, pieces, readAll, upload, type BlobConformance } from '../blob-harness.js';
import { FC_SEED } from '../harness.js';

/** The row size of the PostgreSQL store, and a common chunk size: reads and cuts around it are where off-by-ones live. */
const ROW = 256 * KiB;

export function blobTransferTests(t: BlobConformance): void {
  let store: BlobStore;
  beforeEach(() => {
    store = t.store;
  });

  it('reads back a blob uploaded in several chunks byte-exact, in any range, and nothing past its end', async () => {
    const bytes = contentOf(2 * ROW + 70_003);
    const digest = digestOf(bytes);
    const cuts = [100_000, 100_001, ROW + 5, 2 * ROW]; // uneven, a one-byte chunk, one ending on a row boundary
    expect(await upload(store, 'alice', bytes, cuts)).toEqual({ complete: true, received: bytes.length });
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: true, received: bytes.length });

    expectBytes(await readAll(store, digest, 100 * KiB), bytes);
    const ranges: [number, number][] = [
      [0, bytes.length],
      [ROW - 3, 7], // across a row boundary
      [99_999, 3], // across the one-byte chunk
      [ROW, ROW], // exactly one row
      [2 * ROW - 1, 2], // the last byte of a row and the first of the next
      [bytes.length - 1, 1], // the last byte
      [bytes.length - 10, 1000], // running past the end: fewer bytes
    ];
    for (const [offset, length] of ranges) expectBytes(await store.read(digest, offset, length), bytes.subarray(offset, offset + length));
    expect((await store.read(digest, bytes.length, 10)).length).toBe(0); // at the end
    expect((await store.read(digest, bytes.length + 5000, 10)).length).toBe(0); // past it
    expect((await store.read(digest, 10, 0)).length).toBe(0);
  });

  it('refuses an append at any offset but where the upload stands, says where that is, and writes nothing', async () => {
    const bytes = contentOf(3000);
    const digest = digestOf(bytes);
    await expectRefused(store.append(digest, 'alice', bytes.length, 10, bytes.subarray(10, 20)), 'offset', 0); // none started
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 0 });

    expect(await store.append(digest, 'alice', bytes.length, 0, bytes.subarray(0, 1000))).toEqual({ complete: false, received: 1000 });
    const junk = contentOf(1000);
    await expectRefused(store.append(digest, 'alice', bytes.length, 500, junk), 'offset', 1000); // a repeat, overlapping
    await expectRefused(store.append(digest, 'alice', bytes.length, 0, junk), 'offset', 1000);
    await expectRefused(store.append(digest, 'alice', bytes.length, 2000, junk), 'offset', 1000); // a gap
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 1000 });
    expect(await store.usage('alice')).toBe(1000);

    // Had anything been written, the content would not match its digest now.
    expect(await upload(store, 'alice', bytes, 1000, 1000)).toEqual({ complete: true, received: 3000 });
    expectBytes(await store.read(digest, 0, 3000), bytes);
  });

  it('resumes after a dropped link (and, for a durable store, a restart) from where uploadState says the upload stands', async () => {
    const bytes = contentOf(5 * 40 * KiB + 17);
    const digest = digestOf(bytes);
    const [first, second, third] = pieces(bytes, 40 * KiB);
    for (const piece of [first!, second!]) await store.append(digest, 'alice', bytes.length, piece.offset, piece.bytes);
    // The third arrives, but its answer is lost with the link: the client does not know where the upload stands.
    await store.append(digest, 'alice', bytes.length, third!.offset, third!.bytes);
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 3 * 40 * KiB });
    // Sending the third again is refused, with the offset to go on from.
    await expectRefused(store.append(digest, 'alice', bytes.length, third!.offset, third!.bytes), 'offset', 3 * 40 * KiB);

    if (t.durable) {
      store = await t.reopen(); // the server restarted meanwhile
      expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 3 * 40 * KiB });
    }
    expect(await upload(store, 'alice', bytes, 40 * KiB, 3 * 40 * KiB)).toEqual({ complete: true, received: bytes.length });
    expectBytes(await readAll(store, digest), bytes);
  });

  it('refuses content that does not match its digest, removes the upload, and takes the right content after', async () => {
    const bytes = contentOf(300 * KiB);
    const digest = digestOf(bytes);
    const forged = bytes.slice();
    forged[ROW + 1]! ^= 1; // one bit, in the second row
    await store.append(digest, 'mallory', bytes.length, 0, forged.subarray(0, 200 * KiB));
    await expectRefused(store.append(digest, 'mallory', bytes.length, 200 * KiB, forged.subarray(200 * KiB)), 'digest', 0);

    expect(await store.uploadState(digest, 'mallory')).toEqual({ complete: false, received: 0 });
    expect(await store.stored([digest])).toEqual(new Map());
    await expect(store.read(digest, 0, 10)).rejects.toThrow();
    expect(await store.usage('mallory')).toBe(0);

    expect(await upload(store, 'mallory', bytes, 100 * KiB)).toEqual({ complete: true, received: bytes.length });
    expectBytes(await readAll(store, digest), bytes);
  });

  it('refuses bytes past the declared length, and a length other than the first append\'s, writing nothing', async () => {
    const bytes = contentOf(1000);
    const digest = digestOf(bytes);
    await expectRefused(store.append(digest, 'alice', 1000, 0, contentOf(1001)), 'length', 0);
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 0 });

    await store.append(digest, 'alice', 1000, 0, bytes.subarray(0, 600));
    await expectRefused(store.append(digest, 'alice', 1000, 600, contentOf(401)), 'length', 600);
    await expectRefused(store.append(digest, 'alice', 2000, 600, bytes.subarray(600)), 'length', 600);
    await expectRefused(store.append(digest, 'alice', 600, 600, new Uint8Array(0)), 'length', 600);
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 600 });

    expect(await store.append(digest, 'alice', 1000, 600, bytes.subarray(600))).toEqual({ complete: true, received: 1000 });
    expectBytes(await store.read(digest, 0, 1000), bytes);
  });

  it('answers stored() with the lengths of the stored digests only, the empty blob included', async () => {
    const a = contentOf(1234);
    const empty = new Uint8Array(0);
    const partial = contentOf(500);
    await upload(store, 'alice', a);
    expect(await store.append(digestOf(empty), 'alice', 0, 0, empty)).toEqual({ complete: true, received: 0 });
    await store.append(digestOf(partial), 'alice', 500, 0, partial.subarray(0, 100));
    const absent = digestOf(contentOf(10));

    const stored = await store.stored([digestOf(a), absent, digestOf(empty), digestOf(partial), digestOf(a)]);
    expect(stored).toEqual(new Map([[digestOf(a), 1234], [digestOf(empty), 0]]));
    expect(await store.stored([])).toEqual(new Map());
    expect((await store.read(digestOf(empty), 0, 10)).length).toBe(0);
  });

  it('throws on a read of a blob that is not stored: never uploaded, or an upload not yet complete', async () => {
    await expect(store.read(digestOf(contentOf(10)), 0, 10)).rejects.toThrow();
    const partial = contentOf(500);
    await store.append(digestOf(partial), 'alice', 500, 0, partial.subarray(0, 499));
    await expect(store.read(digestOf(partial), 0, 10)).rejects.toThrow();
  });

  it('refuses a digest that is not 64 lowercase hex digits before it reaches storage', async () => {
    const bytes = contentOf(10);
    for (const digest of ['../../etc/passwd', digestOf(bytes).toUpperCase(), `${digestOf(bytes)}0`, '']) {
      await expect(store.append(digest, 'alice', 10, 0, bytes)).rejects.toThrow(/digest/);
      await expect(store.uploadState(digest, 'alice')).rejects.toThrow(/digest/);
      await expect(store.read(digest, 0, 10)).rejects.toThrow(/digest/);
    }
  });

  it('stores a 20 MB blob sent in 256 KiB chunks, and reads it back whole', async () => {
    const bytes = contentOf(20 * MiB + 3);
    const digest = digestOf(bytes);
    expect(await upload(store, 'alice', bytes, 256 * KiB)).toEqual({ complete: true, received: bytes.length });
    expect(await store.stored([digest])).toEqual(new Map([[digest, bytes.length]]));
    const back = await readAll(store, digest, MiB);
    expect(digestOf(back)).toBe(digest);
    expectBytes(await store.read(digest, 13 * MiB - 5, 10), bytes.subarray(13 * MiB - 5, 13 * MiB + 5));
    expect(await store.usage('alice')).toBe(bytes.length);
  }, 120_000);

  it('reads back what was written, wherever the chunks and the reads begin and end (randomized)', async () => {
    const around = [ROW - 1, ROW, ROW + 1, 2 * ROW - 1, 2 * ROW, 2 * ROW + 1];
    const offset = fc.oneof(fc.integer({ min: 0, max: 3 * ROW }), fc.constantFrom(...around));
    const scenario = fc.record({
      length: fc.oneof(fc.integer({ min: 0, max: 3 * ROW }), fc.constantFrom(0, 1, ROW, 2 * ROW, 2 * ROW + 1)),
      cuts: fc.array(offset, { maxLength: 6 }),
      reads: fc.array(fc.record({ offset, length: fc.oneof(fc.integer({ min: 0, max: ROW + 2 }), fc.constantFrom(1, 2)) }), { minLength: 1, maxLength: 5 }),
    });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async ({ length, cuts, reads }) => {
        const bytes = contentOf(length);
        const digest = digestOf(bytes);
        expect(await upload(store, `owner-${++run}`, bytes, cuts)).toEqual({ complete: true, received: length });
        for (const read of reads) expectBytes(await store.read(digest, read.offset, read.length), bytes.subarray(read.offset, read.offset + read.length));
      }),
      { seed: FC_SEED, numRuns: 15, endOnFailure: true },
    );
  }, 120_000);
}
