/**
 * Attachments sync: content goes up before the change that names it, comes
 * down after the document (which never waits for it), addressed by digest
 * so that the same content is sent and stored once.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { RxCollection } from 'rxdb';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { parsePlaceholder } from '../src/shared/attachments.js';
import { BLOB_CHUNK_BYTES, MESSAGE } from '../src/shared/protocol/index.js';
import { MemorySyncStorage } from '../src/server/index.js';
import { photoDevicesPerTest } from './fixtures/photo-devices.js';
import type { Photo } from './fixtures/photos.js';
import { rawSocket, request, startServer, waitFor, type TestServer } from './helpers.js';

let server: TestServer | undefined;

const device = photoDevicesPerTest(async () => {
  await server?.stop();
  server = undefined;
});

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const blobOf = (bytes: Uint8Array, type = 'image/jpeg') => new Blob([bytes as BlobPart], { type });

async function bytesOf(collection: RxCollection<Photo>, id: string, attachmentId: string): Promise<Uint8Array | undefined> {
  const doc = await collection.findOne(id).exec();
  const attachment = doc?.getAttachment(attachmentId);
  if (!attachment || parsePlaceholder(attachment.digest)) return undefined;
  return new Uint8Array(await (await attachment.getData()).arrayBuffer());
}

describe('attachments', () => {
  it('two devices exchange photos both ways, and removals follow', async () => {
    server = await startServer();
    const alice = await device(server.url);
    const bob = await device(server.url);
    const fromAlice = randomBytes(700_000); // three chunks
    const fromBob = randomBytes(1234);

    const doc = await alice.photos.insert({ id: 'p1', title: 'pump 7' });
    await doc.putAttachment({ id: 'front.jpg', type: 'image/jpeg', data: blobOf(fromAlice) });
    await waitFor(async () => (await bytesOf(bob.photos, 'p1', 'front.jpg'))?.length === fromAlice.length, 'bob to get alice\'s photo', 20_000);
    expect(sha256((await bytesOf(bob.photos, 'p1', 'front.jpg'))!)).toBe(sha256(fromAlice));
    const meta = (await bob.photos.findOne('p1').exec())!.getAttachment('front.jpg')!;
    expect(meta.digest).toBe(sha256(fromAlice));
    expect(meta.type).toBe('image/jpeg');
    expect(meta.length).toBe(fromAlice.length);

    // Bob adds one beside it: alice gets it, and keeps hers.
    await (await bob.photos.findOne('p1').exec())!.putAttachment({ id: 'back.png', type: 'image/png', data: blobOf(fromBob, 'image/png') });
    await waitFor(async () => (await bytesOf(alice.photos, 'p1', 'back.png'))?.length === fromBob.length, 'alice to get bob\'s photo', 20_000);
    expect(sha256((await bytesOf(alice.photos, 'p1', 'back.png'))!)).toBe(sha256(fromBob));
    expect(sha256((await bytesOf(alice.photos, 'p1', 'front.jpg'))!)).toBe(sha256(fromAlice));

    // A removal syncs; so does deleting the document.
    await (await alice.photos.findOne('p1').exec())!.getAttachment('front.jpg')!.remove();
    await waitFor(async () => !(await bob.photos.findOne('p1').exec())?.getAttachment('front.jpg'), 'the removal to reach bob', 20_000);
    expect((await bob.photos.findOne('p1').exec())!.getAttachment('back.png')).not.toBeNull();
    await (await bob.photos.findOne('p1').exec())!.remove();
    await waitFor(async () => (await alice.photos.findOne('p1').exec()) === null, 'the delete to reach alice', 20_000);
    expect(alice.sync.getStatus().rejectedEvents).toBe(0);
    expect(bob.sync.getStatus().rejectedEvents).toBe(0);
  }, 60_000);

  it('stores the same content once and sends it once', async () => {
    server = await startServer();
    const blobs = server.server.getBlobStore()!;
    const appended: number[] = [];
    const append = blobs.append.bind(blobs);
    blobs.append = (digest, owner, length, offset, bytes) => (appended.push(bytes.byteLength), append(digest, owner, length, offset, bytes));
    const alice = await device(server.url);
    const content = randomBytes(300_000);
    for (const id of ['a', 'b']) {
      const doc = await alice.photos.insert({ id, title: id });
      await doc.putAttachment({ id: 'same.jpg', type: 'image/jpeg', data: blobOf(content) });
    }
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 2, 'both pushed', 20_000);
    expect(appended.reduce((a, b) => a + b, 0)).toBe(content.length);
    expect(await blobs.stored([sha256(content)])).toEqual(new Map([[sha256(content), content.length]]));
  }, 60_000);

  it('lazy collections get the metadata at once and the content on getData()', async () => {
    server = await startServer();
    const alice = await device(server.url);
    const bob = await device(server.url, { attachments: { photos: { download: 'lazy', eagerBelowBytes: 100 } } });
    const large = randomBytes(50_000);
    const small = randomBytes(60);
    const doc = await alice.photos.insert({ id: 'p1', title: 'with photos' });
    await doc.putAttachments([
      { id: 'large.jpg', type: 'image/jpeg', data: blobOf(large) },
      { id: 'small.txt', type: 'text/plain', data: blobOf(small, 'text/plain') },
    ]);
    // The small one comes at once; the large one stays a placeholder until it is read.
    await waitFor(async () => (await bytesOf(bob.photos, 'p1', 'small.txt')) !== undefined, 'the small attachment', 20_000);
    const lazy = (await bob.photos.findOne('p1').exec())!.getAttachment('large.jpg')!;
    expect(parsePlaceholder(lazy.digest)).toEqual({ digest: sha256(large), length: large.length });
    // An edit over a placeholder names the content by its digest: pushed, though this device never had the bytes.
    await (await bob.photos.findOne('p1').exec())!.incrementalPatch({ title: 'renamed on bob' });
    await waitFor(async () => (await alice.photos.findOne('p1').exec())!.title === 'renamed on bob', 'the rename to reach alice', 20_000);
    expect(bob.sync.getRejectedEvents()).toEqual([]);
    expect(sha256((await bytesOf(alice.photos, 'p1', 'large.jpg'))!)).toBe(sha256(large));
    const data = new Uint8Array(await (await lazy.getData()).arrayBuffer());
    expect(sha256(data)).toBe(sha256(large));
    // Stored: the document now holds the content under its real digest, and nothing was pushed back.
    await waitFor(async () => (await bytesOf(bob.photos, 'p1', 'large.jpg')) !== undefined, 'the content stored', 20_000);
    expect(bob.sync.getStatus().pendingEvents).toBe(0);
  }, 60_000);

  it('refuses an attachment over maxAttachmentBytes: the change is set aside with a clear error', async () => {
    server = await startServer({ maxAttachmentBytes: 1000 });
    const alice = await device(server.url);
    const doc = await alice.photos.insert({ id: 'p1', title: 'fine' });
    await alice.sync.syncNow();
    await doc.putAttachment({ id: 'big.jpg', type: 'image/jpeg', data: blobOf(randomBytes(5000)) });
    await waitFor(() => alice.sync.getRejectedEvents().length === 1, 'the change to be set aside', 20_000);
    const [rejected] = alice.sync.getRejectedEvents();
    expect(rejected!.error.code).toBe('ATTACHMENT_TOO_LARGE');
    expect(rejected!.error.message).toContain('at most 1000');
    // The document is back at the server's version, without the attachment.
    await waitFor(async () => !(await alice.photos.findOne('p1').exec())!.getAttachment('big.jpg'), 'the document reverted', 20_000);
  }, 60_000);

  it('holds each user to the attachment quota, uploads in progress included', async () => {
    server = await startServer({ attachmentQuota: () => 10_000, authenticate: (_socket, token) => token });
    const alice = await device(server.url, { authToken: 'alice' });
    const first = await alice.photos.insert({ id: 'p1', title: 'one' });
    await first.putAttachment({ id: 'a.jpg', type: 'image/jpeg', data: blobOf(randomBytes(8000)) });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the first pushed', 20_000);
    const second = await alice.photos.insert({ id: 'p2', title: 'two' });
    await second.putAttachment({ id: 'b.jpg', type: 'image/jpeg', data: blobOf(randomBytes(8000)) });
    await waitFor(() => alice.sync.getRejectedEvents().length > 0, 'the second to be refused', 20_000);
    const error = alice.sync.getRejectedEvents()[0]!.error;
    expect(error.code).toBe('ATTACHMENT_TOO_LARGE');
    expect(error.message).toContain('quota');
    expect(error.details).toMatchObject({ quota: true, limit: 2000 });
  }, 60_000);

  it('a transfer cut by a dropped link goes on where it stopped, and resends at most one chunk', async () => {
    server = await startServer();
    const blobs = server.server.getBlobStore()!;
    let appendedBytes = 0;
    let appends = 0;
    const append = blobs.append.bind(blobs);
    const io = server.server.getIo();
    blobs.append = async (digest, owner, length, offset, bytes) => {
      appendedBytes += bytes.byteLength;
      const state = await append(digest, owner, length, offset, bytes);
      // The link drops after the third chunk is stored: its answer, and the chunk after it, are lost.
      if (++appends === 3) io.disconnectSockets(true);
      return state;
    };
    const alice = await device(server.url);
    const bob = await device(server.url);
    const content = randomBytes(BLOB_CHUNK_BYTES * 8 + 1000);
    const doc = await alice.photos.insert({ id: 'p1', title: 'survey' });
    await doc.putAttachment({ id: 'scan.pdf', type: 'application/pdf', data: blobOf(content, 'application/pdf') });
    await waitFor(async () => (await bytesOf(bob.photos, 'p1', 'scan.pdf')) !== undefined, 'bob to get the whole scan', 30_000);
    expect(sha256((await bytesOf(bob.photos, 'p1', 'scan.pdf'))!)).toBe(sha256(content));
    expect(appends).toBeGreaterThan(3);
    expect(appendedBytes - content.length).toBeLessThanOrEqual(BLOB_CHUNK_BYTES);
  }, 60_000);

  it('a document never waits behind another document\'s large upload', async () => {
    server = await startServer();
    const blobs = server.server.getBlobStore()!;
    const append = blobs.append.bind(blobs);
    // A slow disk: every chunk takes 50 ms, so the 40 chunks take at least 2 s.
    blobs.append = (...args) => new Promise((resolve) => setTimeout(resolve, 50)).then(() => append(...args));
    const alice = await device(server.url);
    const bob = await device(server.url);
    const video = await alice.photos.insert({ id: 'video', title: 'walkthrough' });
    await video.putAttachment({ id: 'clip.mp4', type: 'video/mp4', data: blobOf(randomBytes(BLOB_CHUNK_BYTES * 40), 'video/mp4') });
    const uploading = async () => (await firstValueFrom(alice.sync.transfers$)).some((transfer) => transfer.direction === 'upload' && transfer.done < transfer.total);
    await waitFor(uploading, 'the video upload to start', 20_000);
    await alice.photos.insert({ id: 'todo', title: 'check valve' });
    await waitFor(async () => (await bob.photos.findOne('todo').exec()) !== null, 'the todo to reach bob', 20_000);
    // The video is still on its way up (its document, logged before the attachment was put, may be there).
    expect((await bob.photos.findOne('video').exec())?.getAttachment('clip.mp4') ?? null).toBeNull();
    expect(await uploading()).toBe(true);
    await waitFor(async () => (await bytesOf(bob.photos, 'video', 'clip.mp4')) !== undefined, 'the video to arrive after all', 60_000);
  }, 90_000);

  it('serves attachment content only to readers of the document', async () => {
    server = await startServer({
      authenticate: (_socket, token) => token,
      authorize: (user, _collection, _operation, document) => document.owner === undefined || document.owner === user,
    });
    const alice = await device(server.url, { authToken: 'alice' });
    const bob = await device(server.url, { authToken: 'bob' });
    const secret = randomBytes(2000);
    const doc = await alice.photos.insert({ id: 'private', title: 'mine', owner: 'alice' });
    await doc.putAttachment({ id: 'id-card.jpg', type: 'image/jpeg', data: blobOf(secret) });
    await alice.photos.insert({ id: 'shared', title: 'ours' });
    await waitFor(async () => (await bob.photos.findOne('shared').exec()) !== null, 'bob to get the shared document', 20_000);
    const stored = async () => (await server!.server.getStorage().getHeads('photos', ['private']))[0]?.data._attachments !== undefined;
    await waitFor(stored, 'alice\'s photo stored', 20_000);
    expect(await bob.photos.findOne('private').exec()).toBeNull();
    // Asked for directly, by a client that knows the digest: refused, nothing sent.
    const socket = await rawSocket(server.url, { token: 'bob' });
    try {
      const answer = await request(socket, MESSAGE.blobDownload, { collection: 'photos', documentId: 'private', attachmentId: 'id-card.jpg', digest: sha256(secret), offset: 0, length: 1000 });
      expect(answer.ok).toBe(false);
      expect(answer.error.code).toBe('ATTACHMENT_NOT_FOUND');
      // The owner's own raw request gets the bytes.
      const own = await rawSocket(server.url, { token: 'alice' });
      const mine = await request(own, MESSAGE.blobDownload, { collection: 'photos', documentId: 'private', attachmentId: 'id-card.jpg', digest: sha256(secret), offset: 0, length: 1000 });
      own.close();
      expect(mine.ok).toBe(true);
      expect(Buffer.from(mine.bytes)).toEqual(Buffer.from(secret.subarray(0, 1000)));
    } finally {
      socket.close();
    }
  }, 60_000);

  it('under merge, an attachment added on one side survives an edit on the other', async () => {
    server = await startServer();
    const alice = await device(server.url, { conflictResolution: 'merge' });
    const bob = await device(server.url, { conflictResolution: 'merge' });
    await alice.photos.insert({ id: 'p1', title: 'draft' });
    await waitFor(async () => (await bob.photos.findOne('p1').exec()) !== null, 'bob to get p1', 20_000);
    alice.sync.disable();
    bob.sync.disable();
    const photo = randomBytes(5000);
    await (await alice.photos.findOne('p1').exec())!.putAttachment({ id: 'site.jpg', type: 'image/jpeg', data: blobOf(photo) });
    await (await bob.photos.findOne('p1').exec())!.incrementalPatch({ title: 'final' });
    bob.sync.enable();
    await bob.sync.syncNow();
    alice.sync.enable();
    await alice.sync.syncNow();
    await bob.sync.syncNow();
    for (const each of [alice, bob]) {
      await waitFor(async () => (await bytesOf(each.photos, 'p1', 'site.jpg')) !== undefined && (await each.photos.findOne('p1').exec())!.title === 'final', 'both changes on every device', 20_000);
    }
    expect(sha256((await bytesOf(bob.photos, 'p1', 'site.jpg'))!)).toBe(sha256(photo));
  }, 60_000);

  it('uploads again content the server lost, when a push is answered ATTACHMENT_MISSING', async () => {
    server = await startServer();
    const blobs = server.server.getBlobStore()!;
    const alice = await device(server.url);
    const content = randomBytes(3000);
    const first = await alice.photos.insert({ id: 'p1', title: 'one' });
    await first.putAttachment({ id: 'a.jpg', type: 'image/jpeg', data: blobOf(content) });
    const stored = async (id: string) => (await server!.server.getStorage().getHeads('photos', [id]))[0]?.data._attachments !== undefined;
    await waitFor(() => stored('p1'), 'p1 stored with its photo', 20_000);
    // The server loses the content (a sweep that raced, a restored backup): alice still thinks it is there.
    expect(await blobs.sweep(new Set(), { blobsBefore: Date.now() + 60_000, uploadsBefore: Date.now() + 60_000 })).toMatchObject({ blobs: 1 });
    const second = await alice.photos.insert({ id: 'p2', title: 'two' });
    await second.putAttachment({ id: 'b.jpg', type: 'image/jpeg', data: blobOf(content) });
    await waitFor(() => stored('p2'), 'p2 stored after the content went up again', 20_000);
    expect(await blobs.stored([sha256(content)])).toEqual(new Map([[sha256(content), content.length]]));
    expect(alice.sync.getRejectedEvents()).toEqual([]);
    const bob = await device(server.url);
    await waitFor(async () => (await bytesOf(bob.photos, 'p2', 'b.jpg')) !== undefined, 'bob to get p2 with its photo', 20_000);
  }, 60_000);

  it('removes content no kept version names after compaction, and keeps what is named', async () => {
    server = await startServer();
    const blobs = server.server.getBlobStore()!;
    const alice = await device(server.url);
    const old = randomBytes(2000);
    const current = randomBytes(2000);
    const doc = await alice.photos.insert({ id: 'p1', title: 'meter' });
    await doc.putAttachment({ id: 'reading.jpg', type: 'image/jpeg', data: blobOf(old) });
    const named = async (content: Uint8Array) => (await server!.server.getStorage().getHeads('photos', ['p1']))[0]?.data._attachments?.['reading.jpg' as never]?.['digest' as never] === sha256(content);
    await waitFor(() => named(old), 'the first reading stored', 20_000);
    await (await alice.photos.findOne('p1').exec())!.putAttachment({ id: 'reading.jpg', type: 'image/jpeg', data: blobOf(current) });
    await waitFor(() => named(current), 'the second reading stored', 20_000);
    // Still named by the kept history: nothing goes.
    expect(await server.server.sweepAttachments({ blobMs: 0, uploadMs: 0 }, Date.now() + 1)).toEqual({ blobs: 0, uploads: 0 });
    await server.server.compact();
    expect(await server.server.sweepAttachments({ blobMs: 0, uploadMs: 0 }, Date.now() + 1)).toEqual({ blobs: 1, uploads: 0 });
    expect([...(await blobs.stored([sha256(old), sha256(current)])).keys()]).toEqual([sha256(current)]);
  }, 60_000);

  it('hides attachments with the document\'s sensitive fields', async () => {
    server = await startServer({ sensitiveFields: { photos: ['_attachments'] } });
    const alice = await device(server.url);
    const bob = await device(server.url);
    const secret = randomBytes(2000);
    const doc = await alice.photos.insert({ id: 'p1', title: 'badge' });
    await doc.putAttachment({ id: 'face.jpg', type: 'image/jpeg', data: blobOf(secret) });
    await waitFor(async () => (await server!.server.getStorage().getHeads('photos', ['p1']))[0]?.data._attachments !== undefined, 'the photo stored', 20_000);
    await waitFor(async () => (await bob.photos.findOne('p1').exec()) !== null, 'bob to get the document', 20_000);
    expect((await bob.photos.findOne('p1').exec())!.allAttachments()).toEqual([]);
    const socket = await rawSocket(server.url);
    try {
      const answer = await request(socket, MESSAGE.blobDownload, { collection: 'photos', documentId: 'p1', attachmentId: 'face.jpg', digest: sha256(secret), offset: 0, length: 1000 });
      expect(answer.error?.code).toBe('ATTACHMENT_NOT_FOUND');
    } finally {
      socket.close();
    }
  }, 60_000);

  it('a server that keeps no attachments: changes naming content are set aside, the rest sync', async () => {
    server = await startServer({ storage: new MemorySyncStorage() });
    expect(server.server.getBlobStore()).toBeUndefined();
    const alice = await device(server.url);
    const doc = await alice.photos.insert({ id: 'p1', title: 'with photo' });
    await doc.putAttachment({ id: 'a.jpg', type: 'image/jpeg', data: blobOf(randomBytes(100)) });
    await waitFor(() => alice.sync.getRejectedEvents().length === 1, 'the change to be set aside', 20_000);
    expect(alice.sync.getRejectedEvents()[0]!.error).toMatchObject({ code: 'ATTACHMENT_TOO_LARGE', message: expect.stringContaining('keeps no attachments') });
    await alice.photos.insert({ id: 'p2', title: 'plain' });
    await waitFor(async () => (await server!.server.getStorage().getHeads('photos', ['p2'])).length === 1, 'the plain document stored', 20_000);
  }, 60_000);

  it('charges a user\'s devices together, per-user limits on or off', async () => {
    server = await startServer({ authenticate: (_socket, token) => token, rateLimit: false, attachmentQuota: () => 5000 });
    const phone = await device(server.url, { authToken: 'ana' });
    const tablet = await device(server.url, { authToken: 'ana' });
    const first = await phone.photos.insert({ id: 'p1', title: 'one' });
    await first.putAttachment({ id: 'a.jpg', type: 'image/jpeg', data: blobOf(randomBytes(4000)) });
    await waitFor(async () => (await server!.server.getStorage().getHeads('photos', ['p1']))[0]?.data._attachments !== undefined, 'the first stored', 20_000);
    const second = await tablet.photos.insert({ id: 'p2', title: 'two' });
    await second.putAttachment({ id: 'b.jpg', type: 'image/jpeg', data: blobOf(randomBytes(4000)) });
    await waitFor(() => tablet.sync.getRejectedEvents().length === 1, 'the tablet\'s upload refused by the shared quota', 20_000);
    expect(tablet.sync.getRejectedEvents()[0]!.error.details).toMatchObject({ quota: true });
  }, 60_000);
});
