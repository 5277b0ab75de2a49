/**
 * Attachment content: where an upload stands, a chunk of an upload, a chunk
 * of a download. Uploads are charged to the user (maxAttachmentBytes, the
 * attachmentQuota option) and become part of a document only through a push
 * that names them, which `authorize` sees; downloads are of an attachment
 * of a document's current version that the reader may read.
 */
import { attachmentsOf } from '../../shared/attachments.js';
import { SyncError } from '../../shared/errors.js';
import {
  MAX_BLOB_CHUNK_BYTES,
  asBytes,
  blobDownloadMessageSchema,
  blobStateMessageSchema,
  blobUploadMessageSchema,
  parseMessage,
  type BlobDownloadReply,
  type BlobStateReply,
  type BlobUploadReply,
} from '../../shared/protocol/index.js';
import { matchesScope } from '../../shared/scope.js';
import { readableHead } from '../access.js';
import { BlobNotFoundError } from '../blobs/rules.js';
import { BlobWriteError, type BlobStore } from '../blobs/types.js';
import { defaultUserKey } from '../limits.js';
import { effectiveScope, mayBeScoped } from '../scopes.js';
import { assertKnownCollection, storageFailure, type ServerContext, type SyncSocket } from './context.js';

/**
 * Whose upload this is: the user's key (the `userKey` option, whether or
 * not per-user limits are on), so that a user's devices resume each other's
 * uploads and share one quota; a user without a key is charged per device.
 */
export function ownerOf(ctx: ServerContext<any>, socket: SyncSocket<any>): string {
  let key: string | undefined;
  try {
    key = socket.data.userKey ?? (ctx.options.userKey ?? defaultUserKey)(socket.data.user);
  } catch (error) {
    throw new SyncError('INTERNAL', `userKey threw: ${SyncError.from(error).message}`);
  }
  return key !== undefined ? `user:${key}` : `client:${socket.data.clientId}`;
}

function blobsOf(ctx: ServerContext<any>): BlobStore {
  if (!ctx.blobs) throw new SyncError('INVALID_MESSAGE', 'this server keeps no attachments: createSyncServer was given no `blobs` store');
  return ctx.blobs;
}

export async function handleBlobState<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<BlobStateReply> {
  const blobs = blobsOf(ctx);
  const { digests } = parseMessage(blobStateMessageSchema, raw, 'blob state message');
  const owner = ownerOf(ctx, socket);
  const states: BlobStateReply['states'] = {};
  for (const digest of new Set(digests)) states[digest] = await storeCall(ctx, () => blobs.uploadState(digest, owner));
  return { states };
}

export async function handleBlobUpload<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<BlobUploadReply> {
  const blobs = blobsOf(ctx);
  const message = parseMessage(blobUploadMessageSchema, raw, 'blob upload message');
  const bytes = asBytes(message.bytes);
  if (bytes.byteLength > MAX_BLOB_CHUNK_BYTES) {
    throw new SyncError('PAYLOAD_TOO_LARGE', `a chunk of ${bytes.byteLength} bytes exceeds ${MAX_BLOB_CHUNK_BYTES}`, { bytes: bytes.byteLength, limit: MAX_BLOB_CHUNK_BYTES });
  }
  const limit = ctx.options.maxAttachmentBytes;
  if (message.length > limit) {
    throw new SyncError('ATTACHMENT_TOO_LARGE', `an attachment of ${message.length} bytes exceeds maxAttachmentBytes (${limit})`, { bytes: message.length, limit });
  }
  const owner = ownerOf(ctx, socket);
  await assertWithinQuota(ctx, socket, owner, message.length, message.offset);
  try {
    return await blobs.append(message.digest, owner, message.length, message.offset, bytes);
  } catch (error) {
    if (!(error instanceof BlobWriteError)) throw storeError(ctx, error);
    // Out of step (a chunk resent after a dropped link): the client goes on from where the upload stands.
    if (error.reason === 'offset') return { complete: false, received: error.received };
    throw new SyncError('INVALID_MESSAGE', `upload of ${message.digest}: ${error.message}`, { path: error.reason });
  }
}

/**
 * The user's quota, when the server sets one: what they store already
 * (their uploads in progress included) and the rest of this upload must
 * fit. Looked at on every chunk, so that many uploads begun at once
 * cannot pass it together.
 */
async function assertWithinQuota<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, owner: string, length: number, offset: number): Promise<void> {
  const rule = ctx.options.attachmentQuota;
  if (!rule) return;
  let quota: unknown;
  try {
    quota = await rule(socket.data.user);
  } catch (error) {
    ctx.logger.error({ err: error }, 'attachmentQuota threw; the upload fails and will be retried');
    throw new SyncError('AUTHORIZATION_FAILED', 'could not decide the attachment quota; try again later');
  }
  if (typeof quota !== 'number') return;
  const used = await storeCall(ctx, () => ctx.blobs!.usage(owner));
  // `used` holds this upload's bytes so far (offset of them), which the rest of its length adds to.
  if (used - offset + length > quota) {
    throw new SyncError('ATTACHMENT_TOO_LARGE', `an attachment of ${length} bytes would pass the attachment quota (${quota} bytes, ${used} used)`, {
      bytes: length,
      limit: Math.max(0, quota - used),
      quota: true,
    });
  }
}

export async function handleBlobDownload<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<BlobDownloadReply> {
  const blobs = blobsOf(ctx);
  const message = parseMessage(blobDownloadMessageSchema, raw, 'blob download message');
  const { collection, documentId, attachmentId, digest } = message;
  assertKnownCollection(ctx, collection);
  const notFound = () =>
    new SyncError('ATTACHMENT_NOT_FOUND', `${collection}/${documentId} has no attachment "${attachmentId}" with digest ${digest} that you may read`, {
      collection,
      documentId,
      attachmentId,
    });
  const [stored] = await storeCall(ctx, () => ctx.storage.getHeads(collection, [documentId]));
  // The reader must be allowed the document as a pull would give it: authorize, hidden fields, the scope rule.
  const head = stored && !stored.deleted ? await readableHead(ctx, socket.data.user, stored) : undefined;
  if (!head) throw notFound();
  if (mayBeScoped(ctx.options, collection) && !matchesScope(await effectiveScope(ctx, socket.data.user, collection, null), head.data)) throw notFound();
  const meta = attachmentsOf(head.data)?.[attachmentId];
  if (!meta || meta.digest !== digest) throw notFound();
  let bytes: Uint8Array;
  try {
    bytes = await blobs.read(digest, message.offset, message.length);
  } catch (error) {
    // Named by the document yet not stored: content a sweep took from under a version (see sweep.ts).
    if (error instanceof BlobNotFoundError) throw notFound();
    throw storeError(ctx, error);
  }
  return { bytes, total: meta.length };
}

/** A blob store or storage call, its failure reported as storage's are (see storageFailure). */
async function storeCall<T>(ctx: ServerContext<any>, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw storeError(ctx, error);
  }
}

const storeError = (ctx: ServerContext<any>, error: unknown) => storageFailure(ctx, 'read', 'the blob store failed', error);
