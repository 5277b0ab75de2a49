/**
 * The wire protocol. Every message either side receives is checked against
 * these schemas at runtime; the TypeScript types are inferred from the same
 * schemas, so the types and the checks cannot drift apart.
 *
 * - fields.ts: identifiers, clocks, sequences, scopes: what messages are built of
 * - events.ts: a change as a client makes it and as the server stores it; a document's head
 * - messages.ts: the version, handshake, welcome, message names, subscribe and renew
 * - push.ts: a push in rows, and its answer
 * - pull.ts: a pull, and its answer in pages of rows
 * - spans.ts: sets of sequences, as a pull's `have` names them
 * - live.ts: live messages
 * - blobs.ts: attachment content, in chunks
 * - wire.ts: errors and acknowledgements on the wire, and the check of a received message
 */
export {
  COLLECTION_NAME_PATTERN,
  ID_LENGTHS,
  MAX_DOCUMENT_ID_BYTES,
  clientIdSchema,
  clockNodeSchema,
  collectionNameSchema,
  documentIdSchema,
  eventIdSchema,
  hlcSchema,
  isClientId,
  isCollectionName,
  isDocumentId,
  isEventId,
  isHlc,
  isStorableText,
  sequenceSchema,
} from './fields.js';
export {
  OPERATIONS,
  PATCH_OPERATIONS,
  documentHeadSchema,
  patchOperationSchema,
  pushedEventProblem,
  storedEventSchema,
  syncEventSchema,
  type DocumentHead,
  type Operation,
  type StoredEvent,
  type SyncEvent,
} from './events.js';
export {
  CLIENT_MESSAGES,
  MESSAGE,
  PROTOCOL_VERSION,
  handshakeSchema,
  renewMessageSchema,
  renewReplySchema,
  subscribeMessageSchema,
  subscribeReplySchema,
  welcomeMessageSchema,
  type ClientToServerEvents,
  type Handshake,
  type ProtocolVersion,
  type RenewMessage,
  type RenewReply,
  type ServerToClientEvents,
  type SubscribeMessage,
  type SubscribeReply,
  type WelcomeMessage,
} from './messages.js';
export {
  fromPushRows,
  pushOutcomeSchema,
  pushReplySchema,
  pushRowSchema,
  pushRowsMessageSchema,
  toPushOutcome,
  toPushRows,
  type PushOutcome,
  type PushReply,
  type PushResult,
  type PushRow,
  type PushRowsMessage,
} from './push.js';
export {
  MAX_PULL_HAVE,
  fromPullPage,
  pageEventSchema,
  pullMessageSchema,
  pullPageSchema,
  toPullPage,
  type PageEvent,
  type PullMessage,
  type PullPage,
  type PullReply,
} from './pull.js';
export { sequenceSpanSchema, spanSet, toSpans, type SequenceSpan } from './spans.js';
export {
  completeRemoteEvent,
  leaveSchema,
  liveMessageSchema,
  remoteEventSchema,
  toRemoteEvent,
  type Leave,
  type LiveMessage,
  type RemoteEvent,
  type WireRemoteEvent,
} from './live.js';
export { ackSchema, parseMessage, type Ack } from './wire.js';
export {
  BLOB_CHUNK_BYTES,
  MAX_BLOB_CHUNK_BYTES,
  MAX_BLOB_STATE_DIGESTS,
  asBytes,
  blobDownloadMessageSchema,
  blobDownloadReplySchema,
  blobStateMessageSchema,
  blobStateReplySchema,
  blobUploadMessageSchema,
  uploadStateSchema,
  type BlobDownloadMessage,
  type BlobDownloadReply,
  type BlobStateMessage,
  type BlobStateReply,
  type BlobUploadMessage,
  type BlobUploadReply,
} from './blobs.js';
