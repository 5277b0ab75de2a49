/** Other clients' events, pulled or live, applied to the app's collections. */
import type { RxDocumentData } from 'rxdb';
import type { RemoteEvent } from '../../shared/protocol/index.js';
import { hasData, localState, shadowFromEvent, stateOfEvent, statesEqual, type DocState, type KnownVersion, type Shadow } from '../documents.js';
import type { MetaWrite } from '../meta-store.js';
import { collectionOf, findLocal, writeLocal } from './collections.js';
import { getShadows, serverVersions, shadowDelete, shadowWrite } from './shadows.js';
import { moveCheckpoints, type ReplicationState, type Steps } from './state.js';

/**
 * Applies other clients' events. In `pull` mode every document is settled
 * (conflicts resolved) and the checkpoint advances; in `live` mode only
 * documents without local changes are applied and the rest wait for the
 * next pull, which also moves the checkpoint.
 */
export async function applyRemote(
  state: ReplicationState,
  steps: Steps,
  events: readonly RemoteEvent[],
  mode: 'pull' | 'live',
  checkpoint?: { collections: readonly string[]; seq: number },
  /** Receives the sequences of events now fully applied here (nothing left for a pull to settle). */
  handled?: Set<number>,
): Promise<number> {
  const byCollection = new Map<string, Map<string, RemoteEvent[]>>();
  for (const event of events) {
    if (!state.db.collections[event.collection]) continue;
    const docs = byCollection.get(event.collection) ?? new Map<string, RemoteEvent[]>();
    byCollection.set(event.collection, docs);
    const list = docs.get(event.documentId);
    if (list) list.push(event);
    else docs.set(event.documentId, [event]);
  }
  let applied = 0;
  for (const [collectionName, docs] of byCollection) {
    applied += await applyCollection(state, steps, collectionName, docs, mode, handled);
  }
  if (checkpoint) await moveCheckpoints(state, checkpoint.collections, checkpoint.seq);
  return applied;
}

async function applyCollection(
  state: ReplicationState,
  steps: Steps,
  collectionName: string,
  docs: Map<string, RemoteEvent[]>,
  mode: 'pull' | 'live',
  handled?: Set<number>,
): Promise<number> {
  const done = (documentId: string) => {
    if (handled) for (const event of docs.get(documentId)!) handled.add(event.seq);
  };
  const collection = collectionOf(state, collectionName);
  const ids = [...docs.keys()];
  const currents = await findLocal(collection, ids);
  const shadows = await getShadows(state, collectionName, ids);
  const versions = await serverVersions(state, collectionName, ids, currents, shadows);
  const writes: MetaWrite[] = [];
  const toWrite: { documentId: string; current?: RxDocumentData<unknown>; target: DocState; stamp: Shadow }[] = [];
  const toResolve: { documentId: string; remote: Shadow }[] = [];
  for (const [documentId, list] of docs) {
    const latest = list.length === 1 ? list[0]! : list.reduce((a, b) => (b.seq > a.seq ? b : a));
    const current = currents.get(documentId);
    const server = versions.get(documentId);
    if (isStale(latest, server, state.leftAt.get(collectionName, documentId))) {
      done(documentId);
      continue;
    }
    state.clock.receive(latest.hlc);
    const remote = shadowFromEvent(latest);
    // What the document holds if the app has not changed it; undefined when that is not known.
    let expected: DocState | null | undefined = server ? (hasData(server) ? server : undefined) : null;
    // Our own events coming back acknowledge a push whose answer was lost.
    const entries = state.pending.forDocument(collectionName, documentId);
    const ownIndex = entries.length === 0 ? -1 : entries.findLastIndex((entry) => list.some((event) => event.id === entry.event.id));
    if (ownIndex >= 0 && mode === 'pull') {
      for (const entry of entries.slice(0, ownIndex + 1)) writes.push(state.pending.remove(entry));
      expected = stateOfEvent(entries[ownIndex]!.event);
    }
    const hasLocalChange =
      state.pending.forDocument(collectionName, documentId).length > 0 || expected === undefined || !statesEqual(localState(current), expected);
    if (!hasLocalChange) toWrite.push({ documentId, current, target: remote, stamp: remote });
    else if (mode === 'pull') toResolve.push({ documentId, remote });
  }
  // A deletion of a document this client does not hold has no document to carry its stamp.
  const unstampable = (row: (typeof toWrite)[number]) => row.target.deleted && (!row.current || row.current._deleted);
  const refused = await writeLocal(state, collection, toWrite.filter((row) => !unstampable(row)));
  for (const row of toWrite) {
    if (refused.has(row.documentId)) {
      if (mode === 'pull') toResolve.push({ documentId: row.documentId, remote: row.stamp });
    } else {
      done(row.documentId);
      // A deletion also keeps a shadow: RxDB gives a document inserted again over a tombstone a fresh
      // _meta (and its cleanup purges tombstones), so the stamp would not survive to be its base.
      if (unstampable(row) || row.target.deleted) writes.push(...shadowWrite(state, collectionName, row.documentId, row.stamp));
      // The stamp on the document is newer now; the shadow is not needed any more.
      else if (shadows.has(row.documentId)) writes.push(...shadowDelete(state, collectionName, row.documentId));
    }
  }
  if (writes.length > 0) await state.meta.write(writes);
  for (const { documentId, remote } of toResolve) {
    await steps.recordLocalChanges(collectionName, [documentId]);
    await steps.resolveDocument(collectionName, documentId, remote);
  }
  return toWrite.length - refused.size + toResolve.length;
}

/** An event this client already holds (or a later version of), or one from before the document left its scope. */
function isStale(event: RemoteEvent, server: KnownVersion | undefined, leftAt: number | undefined): boolean {
  return (server !== undefined && server.seq >= event.seq) || (leftAt !== undefined && leftAt > event.seq);
}
