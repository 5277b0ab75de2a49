/** Pure helpers over document states: what changed, what to push, what the server holds. */
import type { RxDocumentData } from 'rxdb';
import { diff, jsonEqual, type JsonObject } from '../shared/json.js';
import type { DocumentHead, Operation, StoredEvent, SyncEvent } from '../shared/protocol.js';
import type { DocumentVersion } from './strategies/types.js';

/** A document's content and whether it is deleted; null when it does not exist at all. */
export interface DocState {
  data: JsonObject;
  deleted: boolean;
}

/** The last server version of a document this client knows: the base of its next change. */
export interface Shadow extends DocState {
  seq: number;
  eventId: string;
  hlc: string;
  clientId: string;
}

/** One entry of the pending-event log. `sent` is set (durably) before the event first leaves. */
export interface PendingEntry {
  key: string;
  event: SyncEvent;
  sent: boolean;
}

export const docKey = (collection: string, documentId: string) => `${collection}|${documentId}`;

/** The app's document without RxDB's bookkeeping fields. */
export function stripMeta(doc: RxDocumentData<unknown>): JsonObject {
  const { _meta, _rev, _attachments, _deleted, ...data } = doc as unknown as JsonObject;
  return data;
}

export function localState(doc: RxDocumentData<unknown> | undefined): DocState | null {
  return doc ? { data: stripMeta(doc), deleted: doc._deleted } : null;
}

export function stateOfEvent(event: Pick<SyncEvent, 'data' | 'op'>): DocState {
  return { data: event.data, deleted: event.op === 'delete' };
}

/** Absent and deleted are the same state for sync purposes. */
export function statesEqual(a: DocState | null, b: DocState | null): boolean {
  const aLive = !!a && !a.deleted;
  const bLive = !!b && !b.deleted;
  if (aLive !== bLive) return false;
  return !aLive || jsonEqual(a!.data, b!.data);
}

/**
 * The change that turns `base` (what the server holds, as far as this client
 * knows; null when it knows of no version) into `current`; null when there is
 * nothing to push.
 */
export function buildChange(
  base: DocState | null,
  current: DocState | null,
): Pick<SyncEvent, 'op' | 'data' | 'patch'> | null {
  const baseLive = !!base && !base.deleted;
  const currentLive = !!current && !current.deleted;
  if (!currentLive) {
    if (baseLive) return { op: 'delete', data: current?.data ?? base!.data };
    // Created and deleted here before the server answered: another client may have
    // created the same document meanwhile, so the delete is still said.
    return base === null && current ? { op: 'delete', data: current.data } : null;
  }
  if (!baseLive) return { op: 'insert', data: current!.data };
  if (jsonEqual(base!.data, current!.data)) return null;
  return { op: 'update', data: current!.data, patch: diff(base!.data, current!.data) };
}

export function shadowFromEvent(event: StoredEvent): Shadow {
  return {
    data: event.data,
    deleted: event.op === 'delete',
    seq: event.seq,
    eventId: event.id,
    hlc: event.hlc,
    clientId: event.clientId,
  };
}

export function shadowFromHead(head: DocumentHead): Shadow {
  return { data: head.data, deleted: head.deleted, seq: head.seq, eventId: head.eventId, hlc: head.hlc, clientId: head.clientId };
}

export function versionOf(shadow: Shadow | null | undefined): DocumentVersion | null {
  return shadow ? { data: shadow.data, deleted: shadow.deleted, hlc: shadow.hlc, clientId: shadow.clientId } : null;
}

export type { Operation };
