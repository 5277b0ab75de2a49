/**
 * Sensitive fields: stripped from every document before it leaves the server,
 * and kept on the server when a client that never saw them writes the document.
 */
import type { DocumentHead, StoredEvent, SyncEvent } from '../shared/protocol/index.js';
import type { SensitiveFields } from './options.js';

type Data = Record<string, unknown>;

const NONE: readonly string[] = [];

export class Redactor {
  private readonly all: readonly string[];
  private readonly perCollection: ReadonlyMap<string, readonly string[]>;
  /** False when no field is ever stripped. */
  readonly active: boolean;

  constructor(option: SensitiveFields) {
    this.all = Array.isArray(option) ? [...new Set(option)] : NONE;
    this.perCollection = new Map(Array.isArray(option) || !option ? [] : Object.entries(option));
    this.active = this.all.length > 0 || [...this.perCollection.values()].some((fields) => fields.length > 0);
  }

  fieldsOf(collection: string): readonly string[] {
    const own = this.perCollection.get(collection);
    return own ? [...this.all, ...own] : this.all;
  }

  /** The document without its sensitive fields (the same object when there is nothing to strip). */
  document(collection: string, data: Data): Data {
    const fields = this.fieldsOf(collection).filter((field) => Object.hasOwn(data, field));
    if (fields.length === 0) return data;
    const copy = { ...data };
    for (const field of fields) delete copy[field];
    return copy;
  }

  /**
   * An event as a client may see it: no sensitive field in its data. (Patches
   * never leave the server: other clients get events as toRemoteEvent makes them.)
   */
  event<E extends Pick<StoredEvent, 'collection' | 'data'>>(event: E): E {
    const data = this.document(event.collection, event.data);
    return data === event.data ? event : { ...event, data };
  }

  events<E extends Pick<StoredEvent, 'collection' | 'data'>>(events: E[]): E[] {
    return events.map((event) => this.event(event));
  }

  head(head: DocumentHead): DocumentHead {
    const data = this.document(head.collection, head.data);
    return data === head.data ? head : { ...head, data };
  }

  /**
   * A client never sees sensitive fields, so its update leaves them out; the
   * server's values are carried over from the version the event is based on,
   * so that such a write does not erase them.
   */
  keepHidden<E extends SyncEvent>(event: E, head: DocumentHead | undefined): E {
    const fields = this.fieldsOf(event.collection);
    if (fields.length === 0 || !head || head.deleted || head.eventId !== event.baseEventId) return event;
    const missing = fields.filter((field) => Object.hasOwn(head.data, field) && !Object.hasOwn(event.data, field));
    if (missing.length === 0) return event;
    const data = { ...event.data };
    for (const field of missing) data[field] = head.data[field];
    return { ...event, data };
  }
}

