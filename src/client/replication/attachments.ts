/**
 * Attachments on this device: what RxDB keeps for a server version's
 * attachments, the content still to download (placeholders), and the
 * documents whose changes wait for their content to reach the server.
 *
 * A document's attachments are part of its data on the wire (see
 * shared/attachments.ts). Writing a server version here never waits for
 * content: an attachment whose bytes this device lacks is written as a
 * placeholder (no bytes, a digest that says so) and downloaded after, so a
 * todo's title arrives however large its photo is. Pushing a change whose
 * content the server lacks waits for its upload, and only that document's
 * changes wait.
 */
import type { RxAttachmentData, RxAttachmentWriteData, RxCollection, RxDocumentData } from 'rxdb';
import { getChangedDocumentsSince, getHeightOfRevision, now } from 'rxdb';
import { Subject } from 'rxjs';
import { attachmentsOf, parsePlaceholder, placeholderDigest, type AttachmentMeta, type Attachments } from '../../shared/attachments.js';
import { SyncError } from '../../shared/errors.js';
import type { PendingEntry } from '../documents.js';
import { REMOTE_CONTEXT, collectionOf, findLocal, notePluginWrite } from './collections.js';
import type { ReplicationState } from './state.js';

/** An attachment of a server version whose content this device has not downloaded. */
export interface WantedAttachment {
  collection: string;
  documentId: string;
  attachmentId: string;
  meta: AttachmentMeta;
}

/** Content this device must upload before the changes that name it can be pushed. */
export interface NeededUpload {
  digest: string;
  length: number;
  /** Where the content is read from: a document and attachment that hold it locally. */
  collection: string;
  documentId: string;
  attachmentId: string;
  /** The pending changes that name it. */
  entries: PendingEntry[];
  /** Bytes of it the server holds, when just asked (see prepareUploads). */
  received?: number;
}

export interface AttachmentBook {
  /** Digests the server holds (it said so, or took an upload of them). */
  readonly onServer: Set<string>;
  /** Documents (collection, NUL, id) whose changes wait for an upload. */
  readonly held: Set<string>;
  /** Attachments to download, by collection, document and attachment id. */
  readonly wanted: Map<string, WantedAttachment>;
  /** Says that `wanted` grew. */
  readonly wanted$: Subject<void>;
}

export function createAttachmentBook(): AttachmentBook {
  return { onServer: new Set(), held: new Set(), wanted: new Map(), wanted$: new Subject() };
}

/** A document's key in `held`. */
export const documentKey = (collection: string, documentId: string) => `${collection}\u0000${documentId}`;
/** An attachment's key in `wanted` (and in the engine's transfers). */
export const attachmentKey = (at: Pick<WantedAttachment, 'collection' | 'documentId' | 'attachmentId'>) => `${documentKey(at.collection, at.documentId)}\u0000${at.attachmentId}`;

export function isWaitingForUpload(state: ReplicationState, entry: PendingEntry): boolean {
  return state.attachments.held.size > 0 && state.attachments.held.has(documentKey(entry.event.collection, entry.event.documentId));
}

/** Whether RxDB keeps attachments for this collection (its schema has `attachments`). */
export function keepsAttachments(collection: RxCollection): boolean {
  return !!collection.schema.jsonSchema.attachments;
}

const EMPTY = new Uint8Array(0);

/**
 * The `_attachments` RxDB is to keep for a document written with `data` (a
 * server version or a resolved state) over `current`: an attachment this
 * device holds with the same digest stays as it is, any other becomes a
 * placeholder and is wanted.
 */
export function localAttachments(
  state: ReplicationState,
  collection: RxCollection,
  documentId: string,
  data: Record<string, unknown>,
  current: RxDocumentData<unknown> | undefined,
  deleted: boolean,
): Record<string, RxAttachmentData | RxAttachmentWriteData> {
  const wire = attachmentsOf(data);
  // A deleted document keeps none (RxDB requires it), nor does a collection without attachments.
  if (deleted || !wire || !keepsAttachments(collection)) return {};
  const held = (current?._attachments ?? {}) as Record<string, RxAttachmentData>;
  const result: Record<string, RxAttachmentData | RxAttachmentWriteData> = {};
  for (const [attachmentId, meta] of Object.entries(wire)) {
    const mine = held[attachmentId];
    if (mine && (mine.digest === meta.digest || parsePlaceholder(mine.digest)?.digest === meta.digest)) {
      result[attachmentId] = mine;
      if (mine.digest !== meta.digest) want(state, { collection: collection.name, documentId, attachmentId, meta });
      continue;
    }
    result[attachmentId] = { digest: placeholderDigest(meta), length: 0, type: meta.type, data: new Blob([EMPTY], { type: meta.type }) };
    want(state, { collection: collection.name, documentId, attachmentId, meta });
  }
  return result;
}

function want(state: ReplicationState, wanted: WantedAttachment): void {
  const key = attachmentKey(wanted);
  const known = state.attachments.wanted.get(key);
  if (known && known.meta.digest === wanted.meta.digest) return;
  state.attachments.wanted.set(key, wanted);
  state.attachments.wanted$.next();
}

export function forgetWanted(state: ReplicationState, wanted: WantedAttachment): void {
  const key = attachmentKey(wanted);
  if (state.attachments.wanted.get(key)?.meta.digest === wanted.meta.digest) state.attachments.wanted.delete(key);
}

/**
 * Every placeholder in the synced collections that keep attachments: the
 * downloads a restart found unfinished. Reads each such collection's
 * storage once, a page at a time, without making documents of it.
 */
export async function findPlaceholders(state: ReplicationState, collections: Iterable<string>): Promise<number> {
  let found = 0;
  for (const name of collections) {
    const collection = state.db.collections[name];
    if (!collection || !keepsAttachments(collection)) continue;
    const primary = collection.schema.primaryPath as string;
    let checkpoint: unknown;
    for (;;) {
      const page = await getChangedDocumentsSince(collection.storageInstance, PLACEHOLDER_PAGE, checkpoint);
      for (const doc of page.documents) {
        if (doc._deleted) continue;
        for (const [attachmentId, attachment] of Object.entries((doc._attachments ?? {}) as Record<string, RxAttachmentData>)) {
          const placeholder = parsePlaceholder(attachment.digest);
          if (!placeholder) continue;
          const documentId = String((doc as Record<string, unknown>)[primary]);
          want(state, { collection: name, documentId, attachmentId, meta: { digest: placeholder.digest, length: placeholder.length, type: attachment.type } });
          found++;
        }
      }
      if (page.documents.length < PLACEHOLDER_PAGE) break;
      checkpoint = page.checkpoint;
    }
  }
  return found;
}

const PLACEHOLDER_PAGE = 1000;

/**
 * Puts downloaded content in place of its placeholder, if the document still
 * has that placeholder (else the content is no longer wanted). The document
 * otherwise stays as it is: its stamp, and a change of the app's not pushed
 * yet. Returns whether the content was stored.
 */
export async function storeDownloaded(state: ReplicationState, wanted: WantedAttachment, content: Blob): Promise<boolean> {
  const collection = collectionOf(state, wanted.collection);
  for (let attempt = 0; attempt < 5; attempt++) {
    const current = (await findLocal(collection, [wanted.documentId])).get(wanted.documentId);
    const attachment = current?._attachments?.[wanted.attachmentId];
    if (!current || current._deleted || !attachment || attachment.digest !== placeholderDigest(wanted.meta)) return false;
    const revision = current._rev.slice(current._rev.indexOf('-') + 1);
    const document = {
      ...current,
      _attachments: { ...current._attachments, [wanted.attachmentId]: { digest: wanted.meta.digest, length: content.size, type: wanted.meta.type, data: content } },
      _meta: { ...current._meta, lwt: now() },
      // The same kind of revision: a server version stays one (see isSyncRevision).
      _rev: `${getHeightOfRevision(current._rev) + 1}-${revision}`,
    } as RxDocumentData<unknown>;
    let response;
    try {
      response = await collection.internalStorageInstance.bulkWrite([{ previous: current, document }], REMOTE_CONTEXT);
    } finally {
      notePluginWrite(state, collection.name);
    }
    if (response.error.length === 0) return true;
    if (response.error[0]!.status !== 409) throw new SyncError('STORAGE_ERROR', `could not store attachment "${wanted.attachmentId}" of ${wanted.collection}/${wanted.documentId} (status ${response.error[0]!.status})`);
  }
  return false;
}

/**
 * What the pending changes need uploaded: for every document with a change
 * that names content not known to be on the server, the content to upload
 * (with a local source for it). Content no document here holds (replaced
 * since, or never downloaded) is `unsourced`: unless the server turns out
 * to hold it, the changes naming it can never be pushed.
 */
export async function neededUploads(
  state: ReplicationState,
  entries: readonly PendingEntry[],
): Promise<{ uploads: NeededUpload[]; unsourced: { digest: string; entries: PendingEntry[] }[] }> {
  const byDigest = new Map<string, { entries: PendingEntry[]; meta: AttachmentMeta }>();
  for (const entry of entries) {
    if (entry.event.op === 'delete') continue;
    const attachments: Attachments | undefined = attachmentsOf(entry.event.data);
    if (!attachments) continue;
    for (const meta of Object.values(attachments)) {
      if (state.attachments.onServer.has(meta.digest)) continue;
      const known = byDigest.get(meta.digest);
      if (known) known.entries.push(entry);
      else byDigest.set(meta.digest, { entries: [entry], meta });
    }
  }
  const uploads: NeededUpload[] = [];
  const unsourced: { digest: string; entries: PendingEntry[] }[] = [];
  for (const [digest, { entries: naming, meta }] of byDigest) {
    const source = await localSource(state, naming, digest);
    if (source) uploads.push({ digest, length: meta.length, ...source, entries: naming });
    else unsourced.push({ digest, entries: naming });
  }
  return { uploads, unsourced };
}

/** A document and attachment that hold `digest` here now, among the documents of `entries`. */
async function localSource(state: ReplicationState, entries: readonly PendingEntry[], digest: string) {
  for (const entry of entries) {
    const collection = state.db.collections[entry.event.collection];
    if (!collection) continue;
    const current = (await findLocal(collection, [entry.event.documentId])).get(entry.event.documentId);
    for (const [attachmentId, attachment] of Object.entries(current?._attachments ?? {})) {
      if (attachment.digest === digest) return { collection: entry.event.collection, documentId: entry.event.documentId, attachmentId };
    }
  }
  return undefined;
}

/** Holds back the documents of changes that name content the server lacks; releases the rest. */
export function holdForUploads(state: ReplicationState, entries: readonly PendingEntry[]): void {
  const held = state.attachments.held;
  held.clear();
  for (const entry of entries) {
    if (entry.event.op === 'delete') continue;
    const attachments = attachmentsOf(entry.event.data);
    if (!attachments) continue;
    for (const id in attachments) {
      if (!state.attachments.onServer.has(attachments[id]!.digest)) held.add(documentKey(entry.event.collection, entry.event.documentId));
    }
  }
}

/** The content of an attachment as this device holds it (its own, or downloaded). */
export async function readLocal(state: ReplicationState, source: Omit<NeededUpload, 'length' | 'entries'>): Promise<Blob> {
  const collection = collectionOf(state, source.collection);
  return collection.storageInstance.getAttachmentData(source.documentId, source.attachmentId, source.digest);
}
