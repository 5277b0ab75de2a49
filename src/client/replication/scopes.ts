/**
 * Scopes: the part of a collection this client holds. Documents that leave
 * it are removed here without a pending event; a move to another scope
 * pulls again from checkpoint 0.
 */
import { normalizeMangoQuery, prepareQuery, type RxCollection, type RxDocumentData } from 'rxdb';
import { DocumentMap } from '../../shared/document-map.js';
import { matchesScope, type Scope } from '../../shared/scope.js';
import { hasData, localState, statesEqual, type DocState, type KnownVersion } from '../documents.js';
import { collectionOf, findLocal, writeLocal, type LocalWrite } from './collections.js';
import { serverVersions, shadowDelete } from './shadows.js';
import { stateWrite, type HeldScope, type ReplicationState } from './state.js';

/** Left documents remembered at once (see leftAt); past it the memory starts again (a stale page is rare). */
const MAX_LEFT_REMEMBERED = 10_000;

/**
 * Documents that left this client's scope: removed here without a pending
 * event, as a remote change is written. A document with unpushed changes
 * stays until they are pushed (the engine asks again then). With
 * `outside`, only those of `documentIds` (or of the whole collection when
 * undefined) whose data does not match it. Returns how many were removed.
 */
export async function leaveScope(
  state: ReplicationState,
  collectionName: string,
  documentIds: readonly string[] | undefined,
  outside?: Scope,
  seqs?: readonly number[],
  /** Documents known to be in the scope on the server: left alone. Any other (with `outside`) leaves whatever its data. */
  confirmed?: { has(documentId: string): boolean },
): Promise<number> {
  const collection = collectionOf(state, collectionName);
  if (state.leftAt.size > MAX_LEFT_REMEMBERED) state.leftAt = new DocumentMap();
  let ids = documentIds ?? (await localIds(collection));
  // What is confirmed stays whatever else holds: at the end of a first sync, that is nearly every document,
  // and neither its local version nor its server version needs reading.
  if (confirmed && !seqs) ids = ids.filter((id) => !confirmed.has(id));
  const unlogged = ids.filter((id) => state.pending.forDocument(collectionName, id).length === 0);
  const currents = await findLocal(collection, unlogged);
  const versions = await serverVersions(state, collectionName, unlogged, currents);
  const rows: LocalWrite[] = [];
  const gone = new Set<string>();
  for (const documentId of ids) {
    if (state.pending.forDocument(collectionName, documentId).length > 0) continue;
    const current = currents.get(documentId);
    if (!current || current._deleted) {
      gone.add(documentId);
      continue;
    }
    const held = localState(current)!;
    if (changedHere(held, versions.get(documentId))) continue;
    if (confirmed ? confirmed.has(documentId) : outside !== undefined && matchesScope(outside, held.data)) continue;
    gone.add(documentId);
    rows.push({ documentId, current, target: { data: held.data, deleted: true }, left: true });
  }
  // Remembered for what left (or was not here): an older version on its way must not bring it back.
  seqs?.forEach((seq, i) => {
    const documentId = documentIds![i]!;
    if (gone.has(documentId) && (state.leftAt.get(collectionName, documentId) ?? -1) < seq) state.leftAt.set(collectionName, documentId, seq);
  });
  return removeLeft(state, collectionName, collection, rows);
}

/**
 * Documents said to have left this client's scope at a version (`seq`):
 * by the server, judged in the scope it held this client to, or by the
 * engine, from a version outside `scope`. Versions before that one are
 * stale from now on. Each document leaves unless it has unpushed changes
 * (it leaves once they are pushed), or this client holds a later version
 * of it, or that very version inside `scope` (the server judged it in
 * another scope, one this client held before). Returns how many left.
 */
export async function leaveAt(state: ReplicationState, collectionName: string, leaves: readonly { documentId: string; seq: number }[], scope: Scope): Promise<number> {
  const collection = collectionOf(state, collectionName);
  if (state.leftAt.size > MAX_LEFT_REMEMBERED) state.leftAt = new DocumentMap();
  const latest = new Map<string, number>();
  for (const { documentId, seq } of leaves) latest.set(documentId, Math.max(seq, latest.get(documentId) ?? -1));
  const ids = [...latest.keys()];
  const currents = await findLocal(collection, ids);
  const versions = await serverVersions(state, collectionName, ids, currents);
  const rows: LocalWrite[] = [];
  for (const [documentId, seq] of latest) {
    if ((state.leftAt.get(collectionName, documentId) ?? -1) < seq) state.leftAt.set(collectionName, documentId, seq);
    if (state.pending.forDocument(collectionName, documentId).length > 0) continue;
    const current = currents.get(documentId);
    if (!current || current._deleted) continue;
    const known = versions.get(documentId);
    const held = localState(current)!;
    if (changedHere(held, known)) continue;
    if (known!.seq > seq || (known!.seq === seq && matchesScope(scope, held.data))) continue;
    rows.push({ documentId, current, target: { data: held.data, deleted: true }, left: true });
  }
  return removeLeft(state, collectionName, collection, rows);
}

/** How many times the collection's scope restarted here: a page asked for before a restart is not for what is held after it. */
export function scopeRestarts(state: ReplicationState, collectionName: string): number {
  return state.restarts.get(collectionName) ?? 0;
}

/** Starts (or restarts) a move to another scope: the collection's checkpoint goes back to 0 with it, durably. */
export async function restartScope(state: ReplicationState, collectionName: string, scope: HeldScope): Promise<void> {
  state.restarts.set(collectionName, scopeRestarts(state, collectionName) + 1);
  state.persisted.scopes = { ...state.persisted.scopes, [collectionName]: scope };
  state.persisted.checkpoints[collectionName] = 0;
  await state.meta.write([stateWrite(state)]);
}

/**
 * The ids of the documents the collection holds, read from its storage as
 * findLocal reads them, not through an RxDB query: a query's cached result
 * follows the database's change events, and whatever writes when they do not
 * flow (sync did, while the database closed) is missing from it. A move read
 * through it left such a document out, and it stayed outside the scope for
 * good. Reading no RxDocuments is also cheaper.
 */
async function localIds(collection: RxCollection): Promise<string[]> {
  const schema = collection.schema.jsonSchema;
  const query = prepareQuery(schema, normalizeMangoQuery<RxDocumentData<Record<string, unknown>>>(schema, { selector: { _deleted: false } }));
  const primary = collection.schema.primaryPath as string;
  const { documents } = await collection.storageInstance.query(query);
  return documents.map((doc) => String((doc as Record<string, unknown>)[primary]));
}

/** Removes the documents that leave, and their shadows; returns how many the app did not change meanwhile. */
async function removeLeft(state: ReplicationState, collectionName: string, collection: RxCollection, rows: readonly LocalWrite[]): Promise<number> {
  if (rows.length === 0) return 0;
  const refused = await writeLocal(state, collection, rows);
  const writes = rows.filter((row) => !refused.has(row.documentId)).flatMap((row) => shadowDelete(state, collectionName, row.documentId));
  if (writes.length > 0) await state.meta.write(writes);
  return rows.length - refused.size;
}

/**
 * Whether the document holds a change of the app's that is not logged yet
 * (or its server version is not known here): it does not leave before that
 * change is logged and pushed (leaveIfOutside then judges it).
 */
function changedHere(held: DocState, known: KnownVersion | undefined): boolean {
  return !known || !hasData(known) || !statesEqual(held, known);
}
