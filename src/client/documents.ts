/** Pure helpers over document states: what changed, what to push, what the server holds. */
import type { RxAttachmentData, RxDocumentData } from 'rxdb';
import { ATTACHMENTS_FIELD, parsePlaceholder, type Attachments } from '../shared/attachments.js';
import { diff, jsonEqual, type JsonObject } from '../shared/json.js';
import type { DocumentHead, Operation, RemoteEvent, SyncEvent } from '../shared/protocol/index.js';
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

/** A server version without its content: what a stamp on a local document records. */
export type VersionInfo = Omit<Shadow, 'data'>;

/** A server version this client knows of a document, with its content when known. */
export type KnownVersion = Shadow | VersionInfo;

export const hasData = (version: KnownVersion): version is Shadow => 'data' in version;

/**
 * The revision token of documents the plugin wrote with a server version
 * (RxDB revisions are `height-token`; the app's own writes carry the
 * database's token). While a document's revision ends in it, the document
 * holds exactly the server version its stamp names.
 */
export const SYNC_REVISION_TOKEN = 'rxofflinesync';
/** The `_meta` field holding a document's stamp: `[seq, eventId, hlc, clientId, deleted ? 1 : 0]`. */
export const STAMP_FIELD = 'rxofflinesync';

export function isSyncRevision(revision: string): boolean {
  return revision.endsWith(`-${SYNC_REVISION_TOKEN}`);
}

export function stampValue(version: VersionInfo): [number, string, string, string, 0 | 1] {
  return [version.seq, version.eventId, version.hlc, version.clientId, version.deleted ? 1 : 0];
}

/** The server version a document was last written with by the plugin, if its `_meta` says. */
export function stampOf(doc: RxDocumentData<unknown>): VersionInfo | undefined {
  const raw = (doc._meta as Record<string, unknown>)[STAMP_FIELD];
  if (!Array.isArray(raw) || raw.length !== 5) return undefined;
  const [seq, eventId, hlc, clientId, deleted] = raw as unknown[];
  if (typeof seq !== 'number' || typeof eventId !== 'string' || typeof hlc !== 'string' || typeof clientId !== 'string') return undefined;
  return { seq, eventId, hlc, clientId, deleted: deleted === 1 };
}

/**
 * The newest server version known for a document: its shadow (kept in the
 * meta store for documents with local changes), or the stamp on the local
 * document, whose content is the document itself while the plugin's write is
 * the last one, else the content captured from the change event of the
 * app's first write after it, else unknown. (A schema migration keeps `_rev`
 * and `_meta`: its result counts as the server's version, it is not pushed.)
 */
export function newestVersion(shadow: Shadow | undefined, current: RxDocumentData<unknown> | undefined, captured: Shadow | undefined): KnownVersion | null {
  const stamp = current ? stampOf(current) : undefined;
  if (!stamp || (shadow && shadow.seq >= stamp.seq)) return shadow ?? null;
  if (isSyncRevision(current!._rev)) return Object.assign(stamp, { data: stripMeta(current!) });
  if (captured && captured.seq === stamp.seq) return captured;
  return stamp;
}

/**
 * The change from a server version whose content is unknown to `current`:
 * the whole document, without a patch. Only after a crash between an app
 * write and its logging; the server still checks it against the right base.
 */
export function blindChange(base: VersionInfo, current: DocState | null): Pick<SyncEvent, 'op' | 'data'> | null {
  const currentLive = !!current && !current.deleted;
  if (!currentLive) return base.deleted ? null : { op: 'delete', data: current?.data ?? {} };
  return { op: base.deleted ? 'insert' : 'update', data: current!.data };
}

/** The change from `base` to `current`, whether or not the content of `base` is known. */
export function changeBetween(
  base: DocState | KnownVersion | null,
  current: DocState | null,
): Pick<SyncEvent, 'op' | 'data' | 'patch'> | null {
  return base && !('data' in base) ? blindChange(base, current) : buildChange(base, current);
}

/** The change that says `current` again, as it is: an empty update, or a delete. */
export function restatement(current: DocState | null): Pick<SyncEvent, 'op' | 'data' | 'patch'> | null {
  if (!current) return null;
  return current.deleted ? { op: 'delete', data: current.data } : { op: 'update', data: current.data, patch: [] };
}

/** One entry of the pending-event log. `sent` is set (durably) before the event first leaves. */
export interface PendingEntry {
  key: string;
  event: SyncEvent;
  sent: boolean;
}

/**
 * The app's document without RxDB's bookkeeping fields, and with its
 * attachments as sync carries them (see shared/attachments.ts): by digest,
 * length and type, a placeholder counted as the content it stands for.
 */
export function stripMeta(doc: RxDocumentData<unknown>): JsonObject {
  const { _meta, _rev, _attachments, _deleted, ...data } = doc as unknown as JsonObject;
  const attachments = wireAttachments(_attachments as Record<string, RxAttachmentData> | undefined);
  if (attachments) data[ATTACHMENTS_FIELD] = attachments as unknown as JsonObject;
  return data;
}

function wireAttachments(attachments: Record<string, RxAttachmentData> | undefined): Attachments | undefined {
  let wire: Attachments | undefined;
  for (const id in attachments) {
    const { digest, length, type } = attachments[id]!;
    const placeholder = parsePlaceholder(digest);
    (wire ??= {})[id] = placeholder ? { digest: placeholder.digest, length: placeholder.length, type } : { digest, length, type };
  }
  return wire;
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

export function shadowFromEvent(event: RemoteEvent): Shadow {
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
