/**
 * Attachment content on the wire: blobs go up and down in chunks, each a
 * request of its own, so that a document's push or pull never waits behind
 * a whole file, and a transfer cut by a dropped link goes on from the last
 * chunk that arrived.
 */
import { z } from 'zod';
import { attachmentIdSchema, digestSchema } from '../attachments.js';
import { collectionNameSchema, documentIdSchema } from './fields.js';

/** The chunk size clients send and ask for: a few round trips of a slow link's bandwidth, small beside a push. */
export const BLOB_CHUNK_BYTES = 256 * 1024;
/** The largest chunk a server takes or sends. */
export const MAX_BLOB_CHUNK_BYTES = 1024 * 1024;
/** At most this many digests in one blob-state request. */
export const MAX_BLOB_STATE_DIGESTS = 256;

/** Bytes as socket.io delivers them: a Buffer on Node, an ArrayBuffer in a browser. */
export const bytesSchema = z.custom<Uint8Array | ArrayBuffer>(
  (value) => value instanceof Uint8Array || value instanceof ArrayBuffer,
  'expected binary data',
);

/** Bytes as a Uint8Array, whichever way they arrived. */
export function asBytes(value: Uint8Array | ArrayBuffer): Uint8Array {
  return value instanceof Uint8Array ? value : new Uint8Array(value);
}

/** Where this client's uploads of these blobs stand (see BlobStore.uploadState). */
export const blobStateMessageSchema = z.strictObject({
  digests: z.array(digestSchema).min(1).max(MAX_BLOB_STATE_DIGESTS),
});
export type BlobStateMessage = z.infer<typeof blobStateMessageSchema>;
export const uploadStateSchema = z.object({ complete: z.boolean(), received: z.number().int().nonnegative() });
export const blobStateReplySchema = z.object({ states: z.record(digestSchema, uploadStateSchema) });
export type BlobStateReply = z.infer<typeof blobStateReplySchema>;

/** One chunk of an upload: `bytes` at `offset` of the blob `digest`, `length` bytes in all. */
export const blobUploadMessageSchema = z.strictObject({
  digest: digestSchema,
  length: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  offset: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  bytes: bytesSchema,
});
export type BlobUploadMessage = z.infer<typeof blobUploadMessageSchema>;
export type BlobUploadReply = z.infer<typeof uploadStateSchema>;

/**
 * One chunk of an attachment's content: asked for by the document and
 * attachment it belongs to, so that the server can check the reader may
 * read that document and that its current version holds the attachment.
 */
export const blobDownloadMessageSchema = z.strictObject({
  collection: collectionNameSchema,
  documentId: documentIdSchema,
  attachmentId: attachmentIdSchema,
  digest: digestSchema,
  offset: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  length: z.number().int().positive().max(MAX_BLOB_CHUNK_BYTES),
});
export type BlobDownloadMessage = z.infer<typeof blobDownloadMessageSchema>;
export const blobDownloadReplySchema = z.object({ bytes: bytesSchema, total: z.number().int().nonnegative() });
export type BlobDownloadReply = z.infer<typeof blobDownloadReplySchema>;
