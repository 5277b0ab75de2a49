/**
 * The server versions this client knows: per-document shadows in the meta
 * store, acknowledged versions not yet folded into them, stamps on the
 * documents themselves, and versions captured from the app's change events.
 */
import type { RxDocumentData } from 'rxdb';
import { newestVersion, type KnownVersion, type Shadow } from '../documents.js';
import type { MetaWrite } from '../meta-store.js';
import type { ReplicationState } from './state.js';

const shadowId = (collection: string, documentId: string) => `shadow|${collection}|${documentId}`;

/** Keeps `shadow` as the document's server version (an acknowledged one it replaces is forgotten). */
export function shadowWrite(state: ReplicationState, collection: string, documentId: string, shadow: Shadow): MetaWrite[] {
  return [{ id: shadowId(collection, documentId), kind: 'shadow', value: shadow }, ...state.acked.forget(collection, documentId)];
}

export function shadowDelete(state: ReplicationState, collection: string, documentId: string): MetaWrite[] {
  return [{ id: shadowId(collection, documentId), kind: 'shadow' }, ...state.acked.forget(collection, documentId)];
}

/** The kept server versions of these documents: shadows, or acknowledged versions not yet folded into them. */
export async function getShadows(state: ReplicationState, collection: string, ids: readonly string[]): Promise<Map<string, Shadow>> {
  const stored = await state.meta.get<Shadow>(ids.map((id) => shadowId(collection, id)));
  const result = new Map<string, Shadow>();
  for (const id of ids) {
    // Most lookups find none (every new document's): then no id is built again.
    const shadow = stored.size > 0 ? stored.get(shadowId(collection, id)) : undefined;
    const acked = state.acked.get(collection, id);
    const newest = acked && (!shadow || acked.seq >= shadow.seq) ? acked : shadow;
    if (newest) result.set(id, newest);
  }
  return result;
}

/**
 * The newest server version known of each document (see newestVersion);
 * `currents` by id, or at the index of each id; `shadows` when already read.
 */
export async function serverVersions(
  state: ReplicationState,
  collectionName: string,
  ids: readonly string[],
  currents: Map<string, RxDocumentData<unknown>> | readonly (RxDocumentData<unknown> | undefined)[],
  shadows?: Map<string, Shadow>,
): Promise<Map<string, KnownVersion>> {
  shadows ??= await getShadows(state, collectionName, ids);
  const result = new Map<string, KnownVersion>();
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    const current = currents instanceof Map ? currents.get(id) : currents[i];
    const version = newestVersion(shadows.get(id), current, state.captured.get(collectionName, id));
    if (version) result.set(id, version);
  }
  return result;
}

/**
 * Folds the oldest page of acknowledged versions into per-document
 * shadows; false when there was none. Called while the client is idle, one
 * page (one push batch) at a time, so live changes are not held up.
 */
export async function foldAcked(state: ReplicationState): Promise<boolean> {
  const page = state.acked.oldest();
  if (!page) return false;
  const stored = await state.meta.get<Shadow>(page.versions.map(([collection, documentId]) => shadowId(collection, documentId)), true);
  const writes: MetaWrite[] = [];
  for (const [collection, documentId, version] of page.versions) {
    const id = shadowId(collection, documentId);
    if ((stored.get(id)?.seq ?? -1) < version.seq) writes.push({ id, kind: 'shadow', value: version });
  }
  writes.push(state.acked.deletion(page.id));
  await state.meta.write(writes);
  state.acked.drop(page.id);
  return true;
}
