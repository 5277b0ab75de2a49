/** The app's collections as the steps read and write them: the plugin's own writes, never logged as the app's. */
import { getHeightOfRevision, now, type BulkWriteRow, type RxCollection, type RxDocumentData } from 'rxdb';
import { SyncError } from '../../shared/errors.js';
import { withFields } from '../../shared/json.js';
import { STAMP_FIELD, stampValue, SYNC_REVISION_TOKEN, type DocState, type VersionInfo } from '../documents.js';
import { localAttachments } from './attachments.js';
import type { ReplicationState } from './state.js';

/** Writes made by the plugin carry this context, so they are never logged as local changes (no echo). */
export const REMOTE_CONTEXT = 'rxdb-offline-sync-remote';

/**
 * The `_meta` field that marks a tombstone the plugin wrote when the
 * document left this client's scope: no change of the app's, so that a
 * recovery reading the storage (a restart, another tab taking the lead)
 * never logs it as a delete. An app write over it gets a fresh `_meta`.
 */
export const LEFT_FIELD = 'rxofflinesyncLeft';

/** One document's state as writeLocal writes it. */
export interface LocalWrite {
  documentId: string;
  current?: RxDocumentData<unknown>;
  target: DocState;
  /** The server version `target` is, when it is one. */
  stamp?: VersionInfo;
  /** The document leaves this client's scope: removed here only (see LEFT_FIELD). */
  left?: true;
}

export function collectionOf(state: ReplicationState, name: string): RxCollection {
  const collection = state.db.collections[name];
  if (!collection) throw new SyncError('UNKNOWN_COLLECTION', `the database has no collection "${name}"`);
  return collection;
}

/** The count of the plugin's writes to the collection so far (see ReplicationState.pluginWrites). */
export function pluginWritesTo(state: ReplicationState, collectionName: string): number {
  return state.pluginWrites.get(collectionName) ?? 0;
}

/** The plugin wrote to the collection (this tab, or another whose event says so). */
export function notePluginWrite(state: ReplicationState, collectionName: string): void {
  state.pluginWrites.set(collectionName, pluginWritesTo(state, collectionName) + 1);
}

export async function findLocal(collection: RxCollection, ids: readonly string[]): Promise<Map<string, RxDocumentData<unknown>>> {
  const docs = await collection.storageInstance.findDocumentsById([...ids], true);
  const primary = collection.schema.primaryPath as string;
  return new Map(docs.map((doc) => [String((doc as Record<string, unknown>)[primary]), doc as RxDocumentData<unknown>]));
}

/**
 * Writes remote or resolved states into the app's collection, each only if
 * the document is still what we read; returns the ids the app changed
 * meanwhile. A row with a `stamp` is exactly that server version: the
 * document gets the plugin's revision token and the stamp in `_meta`, so
 * that it needs no shadow while the app leaves it alone. Any other write
 * drops the stamp (its shadow is kept in the meta store instead).
 *
 * The writes go to the collection's own storage instance, below RxDB's
 * wrapper, because the wrapper replaces `_meta` on inserts; revision and
 * write time are set here the way the wrapper sets them.
 */
export async function writeLocal(state: ReplicationState, collection: RxCollection, rows: readonly LocalWrite[]): Promise<Set<string>> {
  const primary = collection.schema.primaryPath as string;
  const time = now();
  const writeRows: BulkWriteRow<unknown>[] = rows
    .filter(({ current, target }) => !(target.deleted && (!current || current._deleted)))
    .map(({ documentId, current, target, stamp, left }) => {
      const meta: Record<string, unknown> = Object.assign({}, current?._meta, { lwt: time });
      if (stamp) meta[STAMP_FIELD] = stampValue(stamp);
      else delete meta[STAMP_FIELD];
      if (left) meta[LEFT_FIELD] = 1;
      else delete meta[LEFT_FIELD];
      const height = current ? getHeightOfRevision(current._rev) + 1 : 1;
      return {
        previous: current,
        document: withFields(target.data, {
          [primary]: documentId,
          _deleted: target.deleted,
          _attachments: localAttachments(state, collection, documentId, target.data, current, target.deleted),
          _meta: meta,
          _rev: `${height}-${stamp ? SYNC_REVISION_TOKEN : state.db.token}`,
        }) as unknown as RxDocumentData<unknown>,
      };
    });
  const refused = new Set<string>();
  if (writeRows.length === 0) return refused;
  let response;
  try {
    response = await collection.internalStorageInstance.bulkWrite(writeRows, REMOTE_CONTEXT);
  } finally {
    // Once it is done: an app write noted while it ran may be one this write replaced.
    notePluginWrite(state, collection.name);
  }
  for (const error of response.error) {
    if (error.status === 409) refused.add(error.documentId);
    else {
      throw new SyncError('STORAGE_ERROR', `could not write ${collection.name}/${error.documentId} locally (status ${error.status})`, {
        error: (error as { validationErrors?: unknown }).validationErrors,
      });
    }
  }
  return refused;
}
