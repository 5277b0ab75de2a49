/** Several owners: uploads kept apart, one blob for one content, who is charged, what sweep() removes, what a restart keeps. */
import { beforeEach, expect, it } from 'vitest';
import type { BlobStore } from '../../server/blobs/types.js';
import { KiB, contentOf, digestOf, expectBytes, expectRefused, nextMillisecond, readAll, upload, type BlobConformance } from '../blob-harness.js';

export function blobOwnerTests(t: BlobConformance): void {
  let store: BlobStore;
  beforeEach(() => {
    store = t.store;
  });

  it('completes at once a second owner\'s upload of a blob already stored, and drops what it had sent', async () => {
    const bytes = contentOf(100 * KiB);
    const digest = digestOf(bytes);
    await store.append(digest, 'bob', bytes.length, 0, bytes.subarray(0, 10 * KiB)); // bob started first
    await upload(store, 'alice', bytes, 30 * KiB);

    expect(await store.uploadState(digest, 'carol')).toEqual({ complete: true, received: bytes.length });
    expect(await store.append(digest, 'carol', bytes.length, 0, bytes.subarray(0, 30 * KiB))).toEqual({ complete: true, received: bytes.length });
    // Whatever bob sends now, at whatever offset, the answer is that the blob is there.
    expect(await store.append(digest, 'bob', bytes.length, 10 * KiB, bytes.subarray(10 * KiB, 20 * KiB))).toEqual({ complete: true, received: bytes.length });
    expect(await store.uploadState(digest, 'bob')).toEqual({ complete: true, received: bytes.length });

    expect(await store.usage('alice')).toBe(bytes.length);
    expect(await store.usage('bob')).toBe(0);
    expect(await store.usage('carol')).toBe(0);
    expectBytes(await readAll(store, digest), bytes);
  });

  it('completes both of two owners\' uploads of one blob sent at the same time, storing it once', async () => {
    const bytes = contentOf(600 * KiB + 5);
    const digest = digestOf(bytes);
    // Interleaved all the way.
    const states = await Promise.all(['alice', 'bob'].map((owner) => upload(store, owner, bytes, 64 * KiB)));
    expect(states).toEqual([{ complete: true, received: bytes.length }, { complete: true, received: bytes.length }]);
    expect((await store.usage('alice')) + (await store.usage('bob'))).toBe(bytes.length);
    expectBytes(await readAll(store, digest), bytes);

    // And with both last chunks arriving together, so that both complete at once.
    const other = contentOf(300 * KiB);
    const last = 250 * KiB;
    for (const owner of ['carol', 'dave']) await store.append(digestOf(other), owner, other.length, 0, other.subarray(0, last));
    const ends = await Promise.all(['carol', 'dave'].map((owner) => store.append(digestOf(other), owner, other.length, last, other.subarray(last))));
    expect(ends).toEqual([{ complete: true, received: other.length }, { complete: true, received: other.length }]);
    expect((await store.usage('carol')) + (await store.usage('dave'))).toBe(other.length);
    expect(await store.stored([digestOf(other)])).toEqual(new Map([[digestOf(other), other.length]]));
    expectBytes(await readAll(store, digestOf(other)), other);
  });

  it('keeps uploads of different owners apart: one owner\'s garbage never spoils another\'s upload', async () => {
    const bytes = contentOf(200 * KiB);
    const digest = digestOf(bytes);
    // Owners are whatever strings the server uses: nothing in them may name another's upload.
    const [alice, mallory, other] = ['../alice', 'alice/../..', 'Ünï 🙂 \\ :*?'];
    await store.append(digest, alice, bytes.length, 0, bytes.subarray(0, 100 * KiB));

    const junk = contentOf(bytes.length);
    await expectRefused(store.append(digest, mallory, bytes.length, 100 * KiB, junk.subarray(100 * KiB)), 'offset', 0);
    await store.append(digest, mallory, bytes.length, 0, junk.subarray(0, 150 * KiB));
    await expectRefused(store.append(digest, mallory, bytes.length, 150 * KiB, junk.subarray(150 * KiB)), 'digest', 0);
    await expectRefused(store.append(digest, other, bytes.length, 0, junk), 'digest', 0); // all at once
    await store.append(digest, other, bytes.length + 1, 0, junk.subarray(0, 10)); // another length: its own upload only

    expect(await store.uploadState(digest, alice)).toEqual({ complete: false, received: 100 * KiB });
    expect(await store.uploadState(digest, 'alice')).toEqual({ complete: false, received: 0 });
    expect(await upload(store, alice, bytes, 50 * KiB, 100 * KiB)).toEqual({ complete: true, received: bytes.length });
    expectBytes(await readAll(store, digest), bytes);
    expect(await store.usage(alice)).toBe(bytes.length);
    expect(await store.usage(mallory)).toBe(0);
    expect(await store.usage(other)).toBe(0); // alice stored the blob: other's upload of it is moot
  });

  it('charges an owner the blobs it completed first and its unfinished uploads', async () => {
    const stored = contentOf(10 * KiB);
    const unfinished = contentOf(8 * KiB);
    const overtaken = contentOf(4 * KiB);
    await upload(store, 'alice', stored);
    await store.append(digestOf(unfinished), 'alice', unfinished.length, 0, unfinished.subarray(0, 3 * KiB));
    await store.append(digestOf(overtaken), 'alice', overtaken.length, 0, overtaken.subarray(0, KiB));
    expect(await store.usage('alice')).toBe(10 * KiB + 3 * KiB + KiB);
    expect(await store.usage('bob')).toBe(0);

    // Bob completes what alice was still sending: he is charged, her upload of it is moot.
    await upload(store, 'bob', overtaken);
    expect(await store.usage('bob')).toBe(overtaken.length);
    expect(await store.usage('alice')).toBe(10 * KiB + 3 * KiB);
    // Storing again what is stored charges nobody more.
    await upload(store, 'bob', stored);
    expect(await store.usage('bob')).toBe(overtaken.length);
    expect(await store.usage('alice')).toBe(10 * KiB + 3 * KiB);
  });

  it('sweeps unreferenced blobs stored before the time given and uploads idle since before theirs, and nothing else', async () => {
    const oldLoose = contentOf(3 * KiB);
    const oldReferenced = contentOf(5 * KiB);
    const oldUpload = contentOf(7 * KiB);
    await upload(store, 'alice', oldLoose);
    await upload(store, 'alice', oldReferenced);
    await store.append(digestOf(oldUpload), 'alice', oldUpload.length, 0, oldUpload.subarray(0, 2 * KiB));

    const cutoff = await nextMillisecond();
    const young = contentOf(11 * KiB);
    const youngUpload = contentOf(13 * KiB);
    await upload(store, 'bob', young);
    await store.append(digestOf(youngUpload), 'bob', youngUpload.length, 0, youngUpload.subarray(0, 4 * KiB));

    const referenced = new Set([digestOf(oldReferenced)]);
    expect(await store.sweep(referenced, { blobsBefore: cutoff, uploadsBefore: cutoff })).toEqual({ blobs: 1, uploads: 1 });
    expect(await store.stored([oldLoose, oldReferenced, young].map(digestOf))).toEqual(
      new Map([[digestOf(oldReferenced), oldReferenced.length], [digestOf(young), young.length]]),
    );
    await expect(store.read(digestOf(oldLoose), 0, 1)).rejects.toThrow();
    expect(await store.uploadState(digestOf(oldUpload), 'alice')).toEqual({ complete: false, received: 0 });
    expect(await store.uploadState(digestOf(youngUpload), 'bob')).toEqual({ complete: false, received: 4 * KiB });
    expect(await store.usage('alice')).toBe(oldReferenced.length);
    expect(await store.sweep(referenced, { blobsBefore: cutoff, uploadsBefore: cutoff })).toEqual({ blobs: 0, uploads: 0 });

    // A swept blob can be uploaded again.
    expect(await upload(store, 'carol', oldLoose)).toEqual({ complete: true, received: oldLoose.length });
    expect(await store.usage('carol')).toBe(oldLoose.length);

    const later = Date.now() + 1;
    expect(await store.sweep(new Set(), { blobsBefore: later, uploadsBefore: later })).toEqual({ blobs: 3, uploads: 1 });
    expect(await store.stored([oldLoose, oldReferenced, young].map(digestOf))).toEqual(new Map());
    expect((await store.usage('alice')) + (await store.usage('bob')) + (await store.usage('carol'))).toBe(0);
  });

  it('counts a blob confirmed to an uploader as stored anew, so a sweep does not take it from under that upload', async () => {
    const bytes = contentOf(2 * KiB);
    await upload(store, 'alice', bytes);
    const cutoff = await nextMillisecond();
    expect(await store.uploadState(digestOf(bytes), 'bob')).toEqual({ complete: true, received: bytes.length });
    expect(await store.sweep(new Set(), { blobsBefore: cutoff, uploadsBefore: cutoff })).toEqual({ blobs: 0, uploads: 0 });

    const again = await nextMillisecond();
    expect(await store.append(digestOf(bytes), 'carol', bytes.length, 0, bytes)).toEqual({ complete: true, received: bytes.length });
    expect(await store.sweep(new Set(), { blobsBefore: again, uploadsBefore: again })).toEqual({ blobs: 0, uploads: 0 });
    expect(await store.usage('alice')).toBe(bytes.length);
  });

  it('counts a blob that stored() found as stored anew: a push that found it does not lose it to a sweep', async () => {
    const bytes = contentOf(3 * KiB);
    await upload(store, 'alice', bytes);
    const cutoff = await nextMillisecond();
    // A push names the blob: the server asks whether it is stored, and stores the document.
    expect(await store.stored([digestOf(bytes)])).toEqual(new Map([[digestOf(bytes), bytes.length]]));
    // A sweep that read the kept events before that document was stored does not hold its digest.
    expect(await store.sweep(new Set(), { blobsBefore: cutoff, uploadsBefore: cutoff })).toEqual({ blobs: 0, uploads: 0 });
    expect(await store.stored([digestOf(bytes)])).toEqual(new Map([[digestOf(bytes), bytes.length]]));
    const later = await nextMillisecond();
    expect(await store.sweep(new Set(), { blobsBefore: later, uploadsBefore: later })).toEqual({ blobs: 1, uploads: 0 });
    expect(await store.stored([digestOf(bytes)])).toEqual(new Map());
  });

  it('keeps blobs, charges and uploads across init and, for a durable store, a restart', async () => {
    const bytes = contentOf(300 * KiB);
    const partial = contentOf(9 * KiB);
    await upload(store, 'alice', bytes, 100 * KiB);
    await store.append(digestOf(partial), 'bob', partial.length, 0, partial.subarray(0, 5 * KiB));
    await Promise.all([store.init(), store.init()]);
    if (t.durable) store = await t.reopen();

    expectBytes(await readAll(store, digestOf(bytes)), bytes);
    expect(await store.usage('alice')).toBe(bytes.length);
    expect(await store.usage('bob')).toBe(5 * KiB);
    expect(await store.uploadState(digestOf(partial), 'bob')).toEqual({ complete: false, received: 5 * KiB });
    expect(await upload(store, 'bob', partial, KiB, 5 * KiB)).toEqual({ complete: true, received: partial.length });
  });
}
