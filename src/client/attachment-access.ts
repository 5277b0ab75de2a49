/**
 * What the app reads of a synced attachment. RxAttachment.getData() asks the
 * collection's storage instance; for an attachment this device holds as a
 * placeholder (its content not downloaded yet, or lazy), the content is
 * fetched from the server instead, stored, and returned. And the check that
 * the database's digests are the SHA-256 digests sync addresses content by.
 */
import type { RxCollection, RxDatabase } from 'rxdb';
import { filter, first, firstValueFrom, throwError, timeout } from 'rxjs';
import { parsePlaceholder } from '../shared/attachments.js';
import { SyncError } from '../shared/errors.js';
import type { SyncEngine } from './engine.js';
import { keepsAttachments } from './replication/attachments.js';

/** SHA-256 of the empty string, in hex: what RxDB's default hash function answers for ''. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

const PATCHED = new WeakSet<object>();

/**
 * Refuses a database whose digests are not SHA-256 in hex when a synced
 * collection keeps attachments: the server checks content against its
 * digest, and every device must name the same content the same way.
 */
export async function assertSyncableDigests(db: RxDatabase, collections: Iterable<string>): Promise<void> {
  const withAttachments = [...collections].filter((name) => db.collections[name] && keepsAttachments(db.collections[name]!));
  if (withAttachments.length === 0) return;
  const digest = await db.hashFunction('');
  if (digest !== EMPTY_SHA256) {
    throw new SyncError(
      'INVALID_OPTION',
      `collections ${withAttachments.join(', ')} keep attachments, which sync addresses by SHA-256: give createRxDatabase a hashFunction that answers SHA-256 in hex (RxDB's default), not this one`,
      { option: 'hashFunction', value: digest },
    );
  }
}

/** Makes getData() of a placeholder fetch the content through `engine`. Once per collection. */
export function fetchOnRead(collection: RxCollection, engine: SyncEngine): void {
  const instance = collection.storageInstance as { getAttachmentData: RxCollection['storageInstance']['getAttachmentData'] };
  if (!keepsAttachments(collection) || PATCHED.has(instance)) return;
  PATCHED.add(instance);
  const read = instance.getAttachmentData.bind(instance);
  instance.getAttachmentData = async (documentId: string, attachmentId: string, digest: string) => {
    const placeholder = parsePlaceholder(digest);
    if (!placeholder) return read(documentId, attachmentId, digest);
    const doc = await collection.findOne(documentId).exec();
    const type = (doc?.toJSON(true) as { _attachments?: Record<string, { type: string }> } | undefined)?._attachments?.[attachmentId]?.type ?? '';
    const meta = { ...placeholder, type };
    let fetched: Blob | undefined;
    try {
      fetched = await engine.fetchAttachment(collection.name, documentId, attachmentId, meta);
    } catch (error) {
      throw SyncError.from(error);
    }
    if (fetched) return fetched;
    // The leading tab downloads it: the document changes (in every tab) once the content is stored.
    await storedElsewhere(collection, documentId, attachmentId, meta.digest);
    return read(documentId, attachmentId, meta.digest);
  };
}

/** How long a tab that does not lead waits for the leading tab to store content it asked for. */
const OTHER_TAB_WAIT_MS = 120_000;

function storedElsewhere(collection: RxCollection, documentId: string, attachmentId: string, digest: string): Promise<void> {
  const stored = collection.findOne(documentId).$.pipe(
    filter((doc) => (doc?.toJSON(true) as { _attachments?: Record<string, { digest: string }> } | null)?._attachments?.[attachmentId]?.digest === digest),
    first(),
    timeout({
      first: OTHER_TAB_WAIT_MS,
      with: () =>
        throwError(
          () => new SyncError('TIMEOUT', `attachment "${attachmentId}" of ${collection.name}/${documentId} was not downloaded by the leading tab within ${OTHER_TAB_WAIT_MS / 1000} s (is it offline?)`),
        ),
    }),
  );
  return firstValueFrom(stored).then(() => undefined);
}
