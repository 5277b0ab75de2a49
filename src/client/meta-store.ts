/**
 * The plugin's own storage: one RxStorage instance beside the app's
 * collections, in the same RxStorage (so IndexedDB in a browser). It holds the
 * pending-event log, the last server version of each document, checkpoints
 * and conflicts. Being a storage instance and not a collection, it does not
 * count against RxDB's open-collection limit.
 */
import { sha256 } from '@noble/hashes/sha2';
import { bytesToHex } from '@noble/hashes/utils';
import {
  createRevision,
  fillWithDefaultSettings,
  normalizeMangoQuery,
  now,
  prepareQuery,
  type RxDatabase,
  type RxDocumentData,
  type RxJsonSchema,
  type RxStorageInstance,
} from 'rxdb';
import { SyncError } from '../shared/errors.js';

/** `setting`: what the tabs of a database share besides the log (see settings.ts). */
export type MetaKind = 'state' | 'pending' | 'shadow' | 'acked' | 'conflict' | 'rejected' | 'setting';

interface MetaDoc {
  /** The id, or for an id longer than MAX_STORED_ID, `#` and its SHA-256 (see storedId). */
  id: string;
  kind: MetaKind;
  value: unknown;
  /** The whole id, where `id` is its hash. */
  fullId?: string;
}

const META_COLLECTION = 'rxdb-offline-sync-meta';
const WRITE_CONTEXT = 'rxdb-offline-sync-meta';

/**
 * The longest id stored as it is. Storages that index strings pad every
 * indexed id to the schema's maxLength (RxDB's memory storage and the
 * storages built on it, three indexes per document), so a bound for the
 * rare long id (a document id may have 1024 characters) would make every
 * shadow cost kilobytes. Nearly every id is far shorter: `shadow|todos|`
 * and a UUID is 49 characters.
 */
export const MAX_STORED_ID = 128;

/** The id a document is stored under: the id itself, or a digest of it when it is longer than MAX_STORED_ID. */
export function storedId(id: string): string {
  if (id.length <= MAX_STORED_ID) return id;
  // The digest of the UTF-16 code units, big-endian: as UTF-8, ids that differ only in lone
  // surrogates (each encoded as U+FFFD) would have the same digest.
  const units = new Uint8Array(id.length * 2);
  for (let i = 0; i < id.length; i++) {
    const unit = id.charCodeAt(i);
    units[2 * i] = unit >> 8;
    units[2 * i + 1] = unit & 0xff;
  }
  // No id of the plugin's starts with '#': each starts with its kind.
  return `#${bytesToHex(sha256(units))}`;
}

export const META_SCHEMA: RxJsonSchema<RxDocumentData<MetaDoc>> = fillWithDefaultSettings<MetaDoc>({
  version: 1,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: MAX_STORED_ID },
    kind: { type: 'string', maxLength: 16 },
    value: { type: 'object' },
    fullId: { type: 'string' },
  },
  required: ['id', 'kind', 'value'],
  indexes: ['kind'],
});

/** The plugin's storage instance of this schema (exported for tests). */
export function openInstance(db: RxDatabase, schema: RxJsonSchema<RxDocumentData<MetaDoc>>): Promise<RxStorageInstance<MetaDoc, unknown, unknown>> {
  return db.storage.createStorageInstance<MetaDoc>({
    databaseInstanceToken: db.token,
    databaseName: db.name,
    collectionName: META_COLLECTION,
    schema,
    options: {},
    multiInstance: db.multiInstance,
    devMode: false,
  }) as Promise<RxStorageInstance<MetaDoc, unknown, unknown>>;
}

/** Kinds the engine reads in full with getAll() when it starts. */
const LOADED_WHOLE: ReadonlySet<MetaKind> = new Set(['pending', 'acked', 'conflict', 'rejected', 'state']);

export interface MetaWrite {
  id: string;
  kind: MetaKind;
  /**
   * Omit to delete. A function is called when the write is made and its
   * result written (undefined: deleted), so several changes to one document
   * collected for one write() are one write of its final value.
   */
  value?: unknown;
}

/**
 * What a write must know of the stored document it replaces: its revision,
 * and every indexed field (storages find the old index entries through it).
 */
type Revision = Pick<RxDocumentData<MetaDoc>, '_rev' | '_deleted' | '_meta' | 'kind'>;

export class MetaStore {
  /** Known revisions; null marks a document known not to exist. */
  private readonly revisions = new Map<string, Revision | null>();
  /** Deletions written since the last compact(): they stay in storage as tombstones until then. */
  deletedSinceCompaction = 0;

  private constructor(
    private readonly db: RxDatabase,
    private readonly instance: RxStorageInstance<MetaDoc, unknown, unknown>,
  ) {}

  static async open(db: RxDatabase): Promise<MetaStore> {
    return new MetaStore(db, await openInstance(db, META_SCHEMA));
  }

  /**
   * The stored values of these ids. `beforeWriting`: the caller writes these
   * ids next, so ids found missing are remembered as such and the write does
   * not read them again.
   */
  async get<T>(ids: readonly string[], beforeWriting = false): Promise<Map<string, T>> {
    const result = new Map<string, T>();
    if (ids.length === 0) return result;
    const docs = await this.instance.findDocumentsById(ids.map(storedId), true);
    // Otherwise ids found missing are not remembered: most lookups are of documents that never get a
    // record (every pulled document is looked up once), and a write reads the few it needs (loadUnknown).
    if (beforeWriting) for (const id of ids) if (!this.revisions.has(id)) this.revisions.set(id, null);
    for (const doc of docs) {
      this.remember(doc);
      if (!doc._deleted) result.set(doc.fullId ?? doc.id, doc.value as T);
    }
    return result;
  }

  async getAll<T>(kind: MetaKind): Promise<Map<string, T>> {
    // Typed over the stored documents, `_deleted` among their fields: the storage instance holds deleted ones too.
    const query = prepareQuery(META_SCHEMA, normalizeMangoQuery<RxDocumentData<MetaDoc>>(META_SCHEMA, { selector: { kind, _deleted: false }, sort: [{ id: 'asc' }] }));
    const { documents } = await this.instance.query(query);
    const result = new Map<string, T>();
    let digests = false;
    for (const doc of documents) {
      this.remember(doc);
      digests ||= doc.fullId !== undefined;
      result.set(doc.fullId ?? doc.id, doc.value as T);
    }
    // In the order of the ids themselves, as callers list them (conflicts, for one).
    return digests ? new Map([...result].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : result;
  }

  /** Writes and deletes in one storage call; a stale revision is refreshed and retried once. */
  async write(writes: readonly MetaWrite[]): Promise<void> {
    const unique = new Map<string, MetaWrite>();
    // Each document at the place of its last mention: a page rewritten after an entry moved out of
    // it is written after the entry's new page (in case a storage does not write a batch atomically).
    let previous: MetaWrite | undefined;
    for (const write of writes) {
      // A page's write comes once for each of its entries a step touched, one after another: taken once.
      if (write === previous) continue;
      previous = write;
      unique.delete(write.id);
      unique.set(write.id, write);
    }
    let rows = [...unique.values()].map((write) =>
      typeof write.value === 'function' ? { id: write.id, kind: write.kind, value: (write.value as () => unknown)() } : write,
    );
    await this.loadUnknown(rows);
    for (let attempt = 0; attempt < 2 && rows.length > 0; attempt++) {
      const writeRows = rows.flatMap((write) => this.toRow(write));
      if (writeRows.length === 0) return;
      const response = await this.instance.bulkWrite(writeRows, WRITE_CONTEXT);
      // By the ids themselves, not the stored ones.
      const failed = new Set<string>();
      for (const error of response.error) {
        if (error.status === 409 && error.documentInDb) {
          this.remember(error.documentInDb);
          failed.add(error.documentInDb.fullId ?? error.documentId);
        } else {
          throw new SyncError('STORAGE_ERROR', `could not write sync metadata ${error.documentId} (status ${error.status})`);
        }
      }
      for (const row of writeRows) {
        if (failed.has(row.document.fullId ?? row.document.id)) continue;
        this.remember(row.document);
        if (row.document._deleted) this.deletedSinceCompaction++;
      }
      rows = rows.filter((write) => failed.has(write.id));
    }
    if (rows.length > 0) throw new SyncError('STORAGE_ERROR', `sync metadata kept changing under us: ${rows.map((r) => r.id).join(', ')}`);
  }

  /** Drops deleted metadata documents for good. */
  async compact(): Promise<void> {
    this.deletedSinceCompaction = 0;
    await this.instance.cleanup(0);
    for (const [id, revision] of this.revisions) if (revision?._deleted) this.revisions.set(id, null);
  }

  async close(): Promise<void> {
    await this.instance.close();
  }

  private toRow(write: MetaWrite) {
    const previous = this.revisions.get(write.id) ?? undefined;
    const deleting = write.value === undefined;
    if (deleting && (!previous || previous._deleted)) return [];
    const id = storedId(write.id);
    const previousDoc: RxDocumentData<MetaDoc> | undefined = previous ? { id, value: {}, _attachments: {}, ...previous } : undefined;
    const document: RxDocumentData<MetaDoc> = {
      id,
      kind: write.kind,
      value: deleting ? {} : write.value,
      _deleted: deleting,
      _attachments: {},
      _meta: { lwt: now() },
      _rev: createRevision(this.db.token, previousDoc),
    };
    if (id !== write.id) document.fullId = write.id;
    return [{ previous: previousDoc, document }];
  }

  /**
   * Writes need the current revision of documents written by an earlier
   * process. Kinds that are loaded whole at start (getAll) are already known.
   */
  private async loadUnknown(writes: readonly MetaWrite[]): Promise<void> {
    const unknown = writes
      .filter((write) => !this.revisions.has(write.id) && !LOADED_WHOLE.has(write.kind))
      .map((write) => write.id);
    if (unknown.length === 0) return;
    const docs = await this.instance.findDocumentsById(unknown.map(storedId), true);
    // A write that landed while this read was awaited is known better than "missing".
    for (const id of unknown) if (!this.revisions.has(id)) this.revisions.set(id, null);
    for (const doc of docs) this.remember(doc);
  }

  private remember(doc: RxDocumentData<MetaDoc>): void {
    this.revisions.set(doc.fullId ?? doc.id, { _rev: doc._rev, _deleted: doc._deleted, _meta: doc._meta, kind: doc.kind });
  }
}
