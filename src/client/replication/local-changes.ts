/** Local changes into the pending log: each app write, as its change event tells or as storage holds it. */
import { getChangedDocumentsSince, type RxDocumentData } from 'rxdb';
import { randomId } from '../../shared/ids.js';
import type { SyncEvent } from '../../shared/protocol/index.js';
import { changeBetween, isSyncRevision, localState, restatement, stampOf, stateOfEvent, stripMeta, type DocState, type KnownVersion, type PendingEntry } from '../documents.js';
import type { MetaWrite } from '../meta-store.js';
import { collectionOf, findLocal, LEFT_FIELD, pluginWritesTo } from './collections.js';
import { serverVersions, shadowWrite } from './shadows.js';
import { stateWrite, type ReplicationState, type Steps } from './state.js';

const RECOVERY_PAGE = 1000;

/** See localWrites. */
export interface LocalWrites {
  events: readonly { documentId: string; documentData: RxDocumentData<unknown> }[];
  /** The count of the plugin's writes to the collection when these were noted. */
  pluginWrites: number;
}

/**
 * Compares each document's current local state with what the log or the
 * server already has and logs the difference. Idempotent: calling it twice,
 * or for a document the plugin itself wrote, logs nothing new.
 */
export async function recordLocalChanges(
  state: ReplicationState,
  collectionName: string,
  documentIds: readonly string[],
  loggedThrough?: unknown,
  written?: LocalWrites,
): Promise<number> {
  const collection = collectionOf(state, collectionName);
  const fromEvents = written !== undefined && written.pluginWrites === pluginWritesTo(state, collectionName);
  // Each document's current state at the same index as its id. (A document named twice by one bulk
  // is logged twice, its later state last: the loop below is idempotent.)
  const ids = fromEvents ? written.events.map((event) => event.documentId) : [...new Set(documentIds)];
  const currents = fromEvents ? written.events.map((event) => event.documentData) : await findLocal(collection, ids).then((found) => ids.map((id) => found.get(id)));
  const versions = await serverVersions(state, collectionName, ids, currents);
  const writes: MetaWrite[] = [];
  let changed = 0;
  for (let i = 0; i < ids.length; i++) {
    const documentId = ids[i]!;
    const doc = currents[i];
    const captured = state.captured.get(collectionName, documentId);
    if (captured) state.captured.delete(collectionName, documentId);
    const current = localState(doc);
    const server = versions.get(documentId) ?? null;
    // The document no longer holds the server version the capture came from: keep that version.
    if (captured && server === captured) writes.push(...shadowWrite(state, collectionName, documentId, captured));
    const entries = state.pending.forDocument(collectionName, documentId);
    // Removed here when it left the scope: not a delete of the app's.
    if (entries.length === 0 && doc?._deleted && doc._meta[LEFT_FIELD] !== undefined) continue;
    const next = nextChange(entries, server, current);
    if (!next) continue;
    const { change, open, lastSent } = next;
    changed++;
    if (!change) {
      if (open) writes.push(state.pending.remove(open));
      continue;
    }
    // The clock says when the app wrote (RxDB's write time), not when the write was logged.
    const writtenAt = doc?._meta.lwt ?? Date.now();
    // One literal, not fields added to a smaller object: this runs for every document of a bulk write.
    const event: SyncEvent = {
      id: open?.event.id ?? randomId(),
      collection: collectionName,
      documentId,
      op: change.op,
      data: change.data,
      baseEventId: lastSent ? lastSent.event.id : (server?.eventId ?? null),
      hlc: state.clock.tickAt(writtenAt + state.clockOffset),
    };
    if (change.patch) event.patch = change.patch;
    if (open) writes.push(...state.pending.update(open, event));
    else writes.push(state.pending.add({ key: state.pending.nextKey(), event, sent: false }));
  }
  if (loggedThrough !== undefined) {
    state.persisted.logged[collectionName] = loggedThrough;
    writes.push(stateWrite(state));
  }
  if (writes.length > 0) await state.meta.write(writes);
  return changed;
}

/**
 * Called with every app write, as its change event arrives: when the write
 * replaced a server version the plugin had written, that version (the
 * change's base) is in the event and nowhere else.
 */
export function noteLocalWrites(state: ReplicationState, collectionName: string, events: readonly { documentId: string; previousDocumentData?: RxDocumentData<unknown> }[]): void {
  for (const { documentId, previousDocumentData: previous } of events) {
    if (!previous || !isSyncRevision(previous._rev)) continue;
    const stamp = stampOf(previous);
    if (stamp && !state.captured.has(collectionName, documentId)) state.captured.set(collectionName, documentId, Object.assign(stamp, { data: stripMeta(previous) }));
  }
}

/**
 * The app's writes in one change event bulk, to be logged by
 * recordLocalChanges with the states they left, unless the plugin writes
 * to the collection first. Only for writes made in this tab: another
 * tab's events come later than its writes, perhaps after a plugin write
 * that replaced them. This relies on a storage emitting a write's change
 * event before a later read can see the write (RxDB's memory and Dexie
 * storages do, and the wrappers over them keep the order): a plugin write
 * that replaced an app write read it first, so it comes after the app
 * write's event was noted, and moves the count.
 */
export function localWrites(state: ReplicationState, collectionName: string, events: LocalWrites['events']): LocalWrites {
  return { events, pluginWrites: pluginWritesTo(state, collectionName) };
}

/**
 * Logs every change the storage holds after the last logged checkpoint:
 * writes made while the plugin was not running, or lost to a crash between
 * the document write and the log append.
 */
export async function recover(state: ReplicationState, steps: Steps, collectionName: string): Promise<number> {
  const collection = collectionOf(state, collectionName);
  let recovered = 0;
  for (;;) {
    const { documents, checkpoint } = await getChangedDocumentsSince(collection.storageInstance, RECOVERY_PAGE, state.persisted.logged[collectionName]);
    if (documents.length === 0) break;
    const primary = collection.schema.primaryPath as string;
    recovered += await steps.recordLocalChanges(
      collectionName,
      documents.map((doc) => String((doc as Record<string, unknown>)[primary])),
      checkpoint,
    );
    if (documents.length < RECOVERY_PAGE) break;
  }
  if (recovered > 0) state.logger.info({ collection: collectionName, recovered }, 'logged local writes found in storage');
  return recovered;
}

// ---- deciding ----------------------------------------------------------------------

/**
 * What to log for a document now in state `current`, after its log
 * `entries` and its known server version: undefined when nothing changed
 * since the last logged state. `open` is the unsent entry to rewrite, if
 * any (removed when `change` is null: nothing is left to say).
 */
function nextChange(
  entries: readonly PendingEntry[],
  server: KnownVersion | null,
  current: DocState | null,
): { change: Pick<SyncEvent, 'op' | 'data' | 'patch'> | null; open: PendingEntry | undefined; lastSent: PendingEntry | undefined } | undefined {
  const last = entries[entries.length - 1];
  const sinceLogged = changeBetween(last ? stateOfEvent(last.event) : server, current);
  if (!sinceLogged) return undefined;
  const open = last && !last.sent ? last : undefined;
  const lastSent = open ? entries.findLast((entry) => entry.sent) : last;
  // The app wrote since the last logged state and ended on the version the change is based on
  // (an insert deleted again, an edit undone): still a write, and later than any the server may
  // have taken meanwhile, so it is said, or last-write-wins would lose it to an older write.
  // (From the same base as the check above, unless an unsent entry lies between: the diff once.)
  const change = (open ? changeBetween(lastSent ? stateOfEvent(lastSent.event) : server, current) : sinceLogged) ?? restatement(current);
  return { change, open, lastSent };
}

