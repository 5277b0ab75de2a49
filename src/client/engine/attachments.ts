/**
 * Attachment content going up and down beside the document sync, over the
 * same connection, a chunk per request with a few in flight: enough to fill
 * the link, few enough that a push or a pull waits behind little more than
 * a round trip's worth of chunks (see ChunkWindow). Uploads go on from
 * where the server's copy stands after any drop; downloads go on from the
 * last chunk received while the process lives. Progress is on `transfers$`.
 */
import { sha256 } from '@noble/hashes/sha2';
import { bytesToHex } from '@noble/hashes/utils';
import { BehaviorSubject } from 'rxjs';
import type { AttachmentMeta } from '../../shared/attachments.js';
import { SyncError } from '../../shared/errors.js';
import { BLOB_CHUNK_BYTES, MAX_BLOB_STATE_DIGESTS } from '../../shared/protocol/index.js';
import type { PendingEntry } from '../documents.js';
import { attachmentKey, keepsAttachments, type NeededUpload, type WantedAttachment } from '../replication/attachments.js';
import type { Transport } from '../transport.js';
import { requestSync } from './schedule.js';
import { requireReplicator, type EngineState } from './state.js';

/** Chunks of one transfer in flight at first, and at least. */
const MIN_WINDOW = 2;
/** Chunks of one transfer in flight at most: what a push or pull may have to wait behind. */
const MAX_WINDOW = 8;

/**
 * How many chunks of one transfer are in flight: enough to keep the link
 * busy for a round trip (its bandwidth-delay product, which a fixed count
 * fits on one link only), no more. Each answer tells how long its chunk
 * took from being sent; the quickest is a chunk that met no queue. The
 * chunks waiting on the way are then about size × (1 − quickest ÷ took)
 * (TCP Vegas's estimate): under one, the link has room and the window
 * grows by a chunk; two or more, chunks wait on each other (a slow link,
 * or a busy server) and it shrinks by one. Only a chunk sent since the
 * last change judges it, so that each change is seen before the next.
 */
interface ChunkWindow {
  size: number;
  quickestMs: number;
  /** Changes so far: a chunk sent before the last one tells of a window that no longer is. */
  changes: number;
}

const newWindow = (): ChunkWindow => ({ size: MIN_WINDOW, quickestMs: Number.POSITIVE_INFINITY, changes: 0 });

/** Takes the answer to a chunk sent at `sent.at` (performance.now()), when the window had changed `sent.changes` times. */
function onAnswer(window: ChunkWindow, sent: { at: number; changes: number }): void {
  const tookMs = performance.now() - sent.at;
  window.quickestMs = Math.min(window.quickestMs, tookMs);
  if (sent.changes !== window.changes || tookMs <= 0) return;
  const queued = window.size * (1 - window.quickestMs / tookMs);
  const size = queued < 1 ? Math.min(MAX_WINDOW, window.size + 1) : queued >= 2 ? Math.max(MIN_WINDOW, window.size - 1) : window.size;
  if (size === window.size) return;
  window.size = size;
  window.changes++;
}

/** One attachment's content on its way, as `transfers$` shows it. */
export interface AttachmentTransfer {
  direction: 'upload' | 'download';
  collection: string;
  documentId: string;
  attachmentId: string;
  digest: string;
  /** Bytes the other side has. */
  done: number;
  total: number;
}

interface PartialDownload {
  digest: string;
  parts: Uint8Array[];
  received: number;
  hash: ReturnType<typeof sha256.create>;
}

/** The engine's transfers: uploads waiting, downloads under way, those the app waits for. */
export interface Transfers {
  readonly transfers$: BehaviorSubject<AttachmentTransfer[]>;
  readonly uploads: Map<string, NeededUpload>;
  uploading?: Promise<void>;
  downloading?: Promise<void>;
  /** A push was answered ATTACHMENT_MISSING: the content is looked for and uploaded before the next push. */
  missing?: boolean;
  readonly partials: Map<string, PartialDownload>;
  /** Downloads the app asked for (getData() on a placeholder): they go first, whatever the collection's mode. */
  readonly demanded: Map<string, { promise: Promise<Blob>; resolve: (blob: Blob) => void; reject: (error: unknown) => void }>;
}

export function createTransfers(): Transfers {
  return { transfers$: new BehaviorSubject<AttachmentTransfer[]>([]), uploads: new Map(), partials: new Map(), demanded: new Map() };
}

/** Shows a transfer's progress; a finished one leaves the list. */
function show(state: EngineState, transfer: AttachmentTransfer): void {
  const list = state.transfers.transfers$.value.filter((t) => !(t.direction === transfer.direction && attachmentKey(t) === attachmentKey(transfer)));
  if (transfer.done < transfer.total) list.push(transfer);
  state.transfers.transfers$.next(list);
}

/** Whether a synced collection keeps attachments: without one, nothing here runs. */
export function anyAttachments(state: EngineState): boolean {
  for (const name of state.collections) {
    const collection = state.db.collections[name];
    if (collection && keepsAttachments(collection)) return true;
  }
  return false;
}

// ---- uploads -----------------------------------------------------------------------

/**
 * Before a push: finds the content the pending changes name that the server
 * lacks, holds back those documents' changes, and starts uploading it.
 * Changes whose content is gone from this device, or larger than the server
 * takes, can never be pushed and are set aside.
 */
export async function prepareUploads(state: EngineState, transport: Transport): Promise<void> {
  const replicator = requireReplicator(state);
  const book = replicator.attachments;
  const entries = replicator.pending.all();
  const { uploads, unsourced } = await replicator.neededUploads(entries);
  const limit = transport.serverWelcome?.limits.maxAttachmentBytes;
  if (limit === null) {
    // The server keeps no attachments (its welcome says so): the changes that name content are set aside, the rest go.
    const error = new SyncError('ATTACHMENT_TOO_LARGE', 'the sync server keeps no attachments (it was given no blob store)', { bytes: 0, limit: 0 });
    for (const entry of new Set([...uploads, ...unsourced].flatMap((each) => each.entries))) await replicator.rejectUnpushable(entry, error.toWire());
    replicator.holdForUploads(replicator.pending.all());
    return;
  }
  // Asked of the server first: content it holds already (another device's, or uploaded before a restart) is not sent.
  const asked = new Map<string, { complete: boolean; received: number }>();
  const unknown = [...uploads.filter((upload) => !state.transfers.uploads.has(upload.digest)), ...unsourced].map((each) => each.digest);
  for (let i = 0; i < unknown.length; i += MAX_BLOB_STATE_DIGESTS) {
    const states = await transport.blobState(unknown.slice(i, i + MAX_BLOB_STATE_DIGESTS));
    for (const [digest, upload] of Object.entries(states)) {
      asked.set(digest, upload);
      if (upload.complete) book.onServer.add(digest);
    }
  }
  const refused = new Map<PendingEntry, SyncError>();
  for (const { digest, entries: naming } of unsourced) {
    if (book.onServer.has(digest)) continue;
    for (const entry of naming) {
      refused.set(entry, new SyncError('ATTACHMENT_MISSING', `an attachment of ${entry.event.collection}/${entry.event.documentId} is no longer on this device, and the server does not hold it`, { digests: [digest] }));
    }
  }
  for (const upload of uploads) {
    if (book.onServer.has(upload.digest)) continue;
    if (limit !== undefined && upload.length > limit) {
      const error = new SyncError('ATTACHMENT_TOO_LARGE', `attachment "${upload.attachmentId}" is ${upload.length} bytes; the server takes at most ${limit}`, { bytes: upload.length, limit });
      for (const entry of upload.entries) refused.set(entry, error);
      continue;
    }
    // Where the server's copy stands, just asked: the upload starts there without asking again.
    const received = asked.get(upload.digest)?.received;
    if (!state.transfers.uploads.has(upload.digest)) state.transfers.uploads.set(upload.digest, received === undefined ? upload : { ...upload, received });
  }
  for (const [entry, error] of refused) await replicator.rejectUnpushable(entry, error.toWire());
  replicator.holdForUploads(refused.size > 0 ? replicator.pending.all() : entries);
  startUploads(state, transport);
}

function startUploads(state: EngineState, transport: Transport): void {
  const transfers = state.transfers;
  if (transfers.uploading || transfers.uploads.size === 0) return;
  transfers.uploading = uploadAll(state, transport).finally(() => (transfers.uploading = undefined));
}

async function uploadAll(state: EngineState, transport: Transport): Promise<void> {
  const replicator = requireReplicator(state);
  for (const [digest, upload] of state.transfers.uploads) {
    if (!transport.connected || state.closed) return;
    try {
      await uploadOne(state, transport, upload);
      replicator.attachments.onServer.add(digest);
      state.transfers.uploads.delete(digest);
      // The changes it held can go now.
      void requestSync(state, { push: true, pull: false });
    } catch (error) {
      const syncError = SyncError.from(error);
      if (interrupted(syncError)) {
        // Kept: goes on from where the server's copy stands, after the wait the server asked for, or on the next connection.
        state.logger.info({ digest, code: syncError.code }, 'attachment upload interrupted');
        retryLater(state, syncError, () => startUploads(state, transport));
        return;
      }
      state.transfers.uploads.delete(digest);
      state.logger.warn({ digest, code: syncError.code, reason: syncError.message }, 'server refused an attachment upload');
      await state.queue.run(async () => {
        for (const entry of upload.entries) if (replicator.pending.forDocument(entry.event.collection, entry.event.documentId).includes(entry)) await replicator.rejectUnpushable(entry, syncError.toWire());
      });
    }
  }
}

/** A failure that says nothing about the content: the transfer is tried again. */
function interrupted(error: SyncError): boolean {
  return ['NOT_CONNECTED', 'TIMEOUT', 'RATE_LIMITED', 'TOO_MANY_REQUESTS', 'STORAGE_ERROR', 'AUTHORIZATION_FAILED', 'SERVER_BUSY', 'CLOSED'].includes(error.code);
}

/** Runs `again` after the wait the server asked for (or a second), unless the link is down: a new connection starts transfers anew. */
function retryLater(state: EngineState, error: SyncError, again: () => void): void {
  if (error.code === 'NOT_CONNECTED' || error.code === 'CLOSED' || state.closed) return;
  const timer = setTimeout(() => {
    if (!state.closed && state.transport?.connected) again();
  }, error.retryAfterMs() ?? 1000);
  timer.unref?.();
}

/** Sends one blob from where the server's copy stands, a window of chunks in flight. */
async function uploadOne(state: EngineState, transport: Transport, upload: NeededUpload): Promise<void> {
  const replicator = requireReplicator(state);
  const content = await replicator.readAttachment(upload);
  const { digest, length } = upload;
  const progress = (done: number) => show(state, { direction: 'upload', collection: upload.collection, documentId: upload.documentId, attachmentId: upload.attachmentId, digest, done, total: length });
  // Under the server's message limit, with room for the message around the bytes.
  const chunkBytes = Math.max(1024, Math.min(BLOB_CHUNK_BYTES, (transport.serverWelcome?.limits.maxPayloadBytes ?? Infinity) - 1024));
  // Known from the check before the push, once; a retry asks again.
  const known = upload.received;
  delete upload.received;
  const start = known === undefined ? (await transport.blobState([digest]))[digest] : { complete: false, received: known };
  if (start?.complete) return;
  let next = start?.received ?? 0;
  progress(next);
  const window = newWindow();
  const inFlight: { end: number; sent: { at: number; changes: number }; reply: Promise<{ complete: boolean; received: number }> }[] = [];
  for (;;) {
    // An empty blob is one empty chunk.
    while (inFlight.length < window.size && (next < length || (length === 0 && inFlight.length === 0))) {
      const bytes = new Uint8Array(await content.slice(next, Math.min(length, next + chunkBytes)).arrayBuffer());
      const sent = { at: performance.now(), changes: window.changes };
      const reply = transport.uploadChunk({ digest, length, offset: next, bytes });
      // Awaited in turn below; one that fails while an earlier one is awaited is not unhandled.
      reply.catch(() => undefined);
      inFlight.push({ end: next + bytes.byteLength, sent, reply });
      next += bytes.byteLength;
      if (length === 0) break;
    }
    const sent = inFlight.shift();
    if (!sent) throw new SyncError('INTERNAL', `upload of ${digest} ended without the server completing it`);
    const reply = await sent.reply;
    onAnswer(window, sent.sent);
    progress(reply.received);
    if (reply.complete) {
      await Promise.allSettled(inFlight.map((each) => each.reply));
      return;
    }
    if (reply.received !== sent.end) {
      // Out of step with the server's copy: what is in flight is refused too; go on from where it stands.
      await Promise.allSettled(inFlight.map((each) => each.reply));
      inFlight.length = 0;
      next = reply.received;
    }
  }
}

// ---- downloads ---------------------------------------------------------------------

/** Whether `wanted` is downloaded without the app asking: its collection's mode and threshold. */
function eager(state: EngineState, wanted: WantedAttachment): boolean {
  const mode = state.options.attachments[wanted.collection];
  return !mode || mode.download === 'eager' || wanted.meta.length <= mode.eagerBelowBytes;
}

/** Starts downloading what is wanted, while connected; called when more is wanted and on each connection. */
export function startDownloads(state: EngineState): void {
  const transport = state.transport;
  const transfers = state.transfers;
  if (transfers.downloading || !transport?.connected || state.closed || !state.replicator) return;
  transfers.downloading = downloadAll(state, transport).then((finished) => {
    transfers.downloading = undefined;
    // Wanted while the last one finished: not missed. (An interrupted run is started again by its retry.)
    if (finished && transport.connected && nextWanted(state)) startDownloads(state);
  });
}

function nextWanted(state: EngineState): WantedAttachment | undefined {
  const wanted = requireReplicator(state).attachments.wanted;
  for (const key of state.transfers.demanded.keys()) {
    const demanded = wanted.get(key);
    if (demanded) return demanded;
  }
  for (const each of wanted.values()) if (eager(state, each)) return each;
  return undefined;
}

/** Downloads what is wanted; false when interrupted (the link, the server's limits). */
async function downloadAll(state: EngineState, transport: Transport): Promise<boolean> {
  const replicator = requireReplicator(state);
  for (let wanted = nextWanted(state); wanted; wanted = nextWanted(state)) {
    if (!transport.connected || state.closed) return false;
    const key = attachmentKey(wanted);
    try {
      const content = await downloadOne(state, transport, wanted);
      await state.queue.run(() => replicator.storeDownloaded(wanted!, content));
      replicator.forgetWanted(wanted);
      state.transfers.demanded.get(key)?.resolve(content);
    } catch (error) {
      const syncError = SyncError.from(error);
      if (interrupted(syncError)) {
        // Kept, with what arrived of it: goes on after the wait the server asked for, or on the next connection.
        retryLater(state, syncError, () => startDownloads(state));
        return false;
      }
      // Not (or no longer) the document's content here: the version that replaced it brings its own.
      state.logger.info({ collection: wanted.collection, documentId: wanted.documentId, attachmentId: wanted.attachmentId, code: syncError.code }, 'attachment not downloaded');
      replicator.forgetWanted(wanted);
      state.transfers.partials.delete(key);
      state.transfers.demanded.get(key)?.reject(syncError);
    }
    state.transfers.demanded.delete(key);
  }
  return true;
}

async function downloadOne(state: EngineState, transport: Transport, wanted: WantedAttachment): Promise<Blob> {
  const { digest, length, type } = wanted.meta;
  const key = attachmentKey(wanted);
  let partial = state.transfers.partials.get(key);
  if (!partial || partial.digest !== digest) {
    partial = { digest, parts: [], received: 0, hash: sha256.create() };
    state.transfers.partials.set(key, partial);
  }
  const at = { direction: 'download' as const, collection: wanted.collection, documentId: wanted.documentId, attachmentId: wanted.attachmentId, digest, total: length };
  show(state, { ...at, done: partial.received });
  const ask = (offset: number) =>
    transport.downloadChunk({ ...pick(wanted), digest, offset, length: Math.min(BLOB_CHUNK_BYTES, length - offset) });
  const window = newWindow();
  const inFlight: { sent: { at: number; changes: number }; reply: Promise<{ bytes: Uint8Array }> }[] = [];
  let next = partial.received;
  while (partial.received < length) {
    while (inFlight.length < window.size && next < length) {
      const sent = { at: performance.now(), changes: window.changes };
      const reply = ask(next);
      reply.catch(() => undefined);
      inFlight.push({ sent, reply });
      next += Math.min(BLOB_CHUNK_BYTES, length - next);
    }
    const asked = inFlight.shift()!;
    let bytes: Uint8Array;
    try {
      ({ bytes } = await asked.reply);
    } catch (error) {
      await Promise.allSettled(inFlight.map((each) => each.reply));
      throw error;
    }
    onAnswer(window, asked.sent);
    if (bytes.byteLength === 0) throw new SyncError('INVALID_MESSAGE', `the server sent no bytes of ${digest} at ${partial.received}`);
    partial.parts.push(bytes);
    partial.hash.update(bytes);
    partial.received += bytes.byteLength;
    show(state, { ...at, done: partial.received });
  }
  state.transfers.partials.delete(key);
  if (partial.received !== length || bytesToHex(partial.hash.digest()) !== digest) {
    throw new SyncError('INVALID_MESSAGE', `the content downloaded for ${wanted.collection}/${wanted.documentId} "${wanted.attachmentId}" does not match its digest`);
  }
  return new Blob(partial.parts as BlobPart[], { type });
}

const pick = ({ collection, documentId, attachmentId }: WantedAttachment) => ({ collection, documentId, attachmentId });

/**
 * The content of an attachment this device holds as a placeholder, fetched
 * now (getData() of a lazy attachment, or of an eager one still on its way).
 */
export function fetchAttachment(state: EngineState, collection: string, documentId: string, attachmentId: string, meta: AttachmentMeta): Promise<Blob> {
  if (!state.replicator || !state.transport?.connected) {
    return Promise.reject(new SyncError('NOT_CONNECTED', `attachment "${attachmentId}" of ${collection}/${documentId} is not downloaded yet, and this tab is not connected to the sync server to fetch it`));
  }
  const key = attachmentKey({ collection, documentId, attachmentId });
  const known = state.transfers.demanded.get(key);
  if (known) return known.promise;
  const book = state.replicator.attachments;
  if (book.wanted.get(key)?.meta.digest !== meta.digest) book.wanted.set(key, { collection, documentId, attachmentId, meta });
  let resolve!: (blob: Blob) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<Blob>((res, rej) => ((resolve = res), (reject = rej)));
  state.transfers.demanded.set(key, { promise, resolve, reject });
  startDownloads(state);
  return promise;
}
