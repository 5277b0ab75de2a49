/**
 * Devices for the attachments scenario: an RxDB database on memory storage
 * with one collection whose schema keeps attachments, synced by this
 * project's plugin (the built package) with its defaults.
 */
import { addRxPlugin, createRxDatabase, type RxCollection, type RxDatabase, type RxJsonSchema } from 'rxdb';
import { RxDBAttachmentsPlugin } from 'rxdb/plugins/attachments';
import { RxDBOfflineSyncPlugin, createSyncPlugin, type SyncApi } from 'rxdb-offline-sync';
import { filter, firstValueFrom } from 'rxjs';
import { dropDatabase, storage } from './database.js';

addRxPlugin(RxDBAttachmentsPlugin);
addRxPlugin(RxDBOfflineSyncPlugin);

export interface Photo {
  id: string;
  title: string;
}

const photoSchema: RxJsonSchema<Photo> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: { id: { type: 'string', maxLength: 100 }, title: { type: 'string' } },
  required: ['id', 'title'],
  attachments: {},
};

export interface Device {
  photos: RxCollection<Photo>;
  sync: SyncApi;
  close(): Promise<void>;
}

let counter = 0;

/** A device syncing with the server on `port` (the server's own, or a slow link's), once its first sync is done. */
export async function openDevice(port: number): Promise<Device> {
  const db: RxDatabase<{ photos: RxCollection<Photo> }> = await createRxDatabase({ name: `att${process.pid}x${(counter++).toString(36)}`, storage, multiInstance: false });
  await db.addCollections({ photos: { schema: photoSchema } });
  const sync = await db.addPlugin(createSyncPlugin({ serverUrl: `http://127.0.0.1:${port}`, collections: ['photos'], logging: { enabled: false } }));
  const result = await sync.syncNow();
  if (!result.success) throw result.error;
  return {
    photos: db.photos,
    sync,
    async close() {
      // dropDatabase frees documents and indexes; the attachments' content is kept beside them.
      const prefix = `${db.name}--memory--`;
      for (const [key, internals] of storage.collectionStates) if (key.startsWith(prefix)) internals.attachments?.clear();
      await dropDatabase(db);
    },
  };
}

/** Resolves when `photos` holds the content `digest` (not a placeholder for it) as attachment `attachmentId` of document `id`. */
export async function holds(photos: RxCollection<Photo>, id: string, attachmentId: string, digest: string): Promise<void> {
  await firstValueFrom(photos.findOne(id).$.pipe(filter((doc) => doc?.getAttachment(attachmentId)?.digest === digest)));
}

/** The bytes of an attachment this device holds. */
export async function contentOf(photos: RxCollection<Photo>, id: string, attachmentId: string): Promise<Uint8Array> {
  const attachment = (await photos.findOne(id).exec())?.getAttachment(attachmentId);
  if (!attachment) throw new Error(`document ${id} has no attachment ${attachmentId}`);
  return new Uint8Array(await (await attachment.getData()).arrayBuffer());
}
