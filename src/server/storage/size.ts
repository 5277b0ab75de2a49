import type { StoredEvent } from '../../shared/protocol/index.js';
import type { ChangesPage } from './types.js';

/**
 * How storage measures a document for pull pages bounded in bytes (the
 * `maxBytes` of getChangesAfter): the UTF-8 length of its JSON text, as
 * JSON.stringify writes it. The durable storages keep this number beside
 * each event when they store it, so that a page is cut without reading the
 * documents it leaves out; the server measures a pushed document the same
 * way to refuse one no page could carry.
 */
export function jsonTextBytes(json: string): number {
  return Buffer.byteLength(json, 'utf8');
}

/** The size of a document as pages count it: jsonTextBytes of its JSON. */
export function documentBytes(data: unknown): number {
  return jsonTextBytes(JSON.stringify(data));
}

/** A page of events, marked as cut by `maxBytes` when it was. */
export function changesPage(events: StoredEvent[], cutByBytes: boolean): ChangesPage {
  return cutByBytes ? Object.assign(events, { cutByBytes }) : events;
}
