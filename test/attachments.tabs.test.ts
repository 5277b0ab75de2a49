/**
 * Attachments across tabs: only the leading tab transfers content, and a
 * tab that does not lead gets a lazy attachment by asking it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { addRxPlugin, createRxDatabase, type RxCollection, type RxDatabase, type RxStorage } from 'rxdb';
import { RxDBAttachmentsPlugin } from 'rxdb/plugins/attachments';
import { RxDBDevModePlugin, disableWarnings } from 'rxdb/plugins/dev-mode';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { wrappedValidateAjvStorage } from 'rxdb/plugins/validate-ajv';
import { afterEach, describe, expect, it } from 'vitest';
import { createSyncPlugin, type SyncApi, type SyncPluginOptions } from '../src/client/index.js';
import { parsePlaceholder } from '../src/shared/attachments.js';
import { startServer, uniqueName, waitFor, type TestServer } from './helpers.js';
import { photoSchema, type Photo } from './fixtures/photos.js';

// Two tabs of one database in one process need ignoreDuplicate, which only dev-mode allows.
disableWarnings();
addRxPlugin(RxDBDevModePlugin);
addRxPlugin(RxDBAttachmentsPlugin);



interface Device {
  db: RxDatabase<{ photos: RxCollection<Photo> }>;
  photos: RxCollection<Photo>;
  sync: SyncApi;
}

const devices: Device[] = [];
let server: TestServer | undefined;

afterEach(async () => {
  for (const device of devices.splice(0)) await device.db.close();
  await server?.stop();
  server = undefined;
});

async function device(url: string, name: string, storage: RxStorage<any, any>, multiInstance: boolean, options: Partial<SyncPluginOptions> = {}): Promise<Device> {
  const db = await createRxDatabase<{ photos: RxCollection<Photo> }>({ name, storage, multiInstance, ignoreDuplicate: multiInstance });
  await db.addCollections({ photos: { schema: photoSchema } });
  const sync = await db.addPlugin(createSyncPlugin({ serverUrl: url, collections: ['photos'], logging: { enabled: false }, retry: { maxRetries: 50, retryDelay: 50, useExponentialBackoff: true }, ...options }));
  const made = { db, photos: db.photos, sync };
  devices.push(made);
  return made;
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe('attachments across tabs', () => {
  it('a tab that does not lead gets a lazy attachment through the tab that does', async () => {
    server = await startServer();
    const alice = await device(server.url, uniqueName('alice'), wrappedValidateAjvStorage({ storage: getRxStorageMemory() }), false);
    const name = uniqueName('tabs');
    const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    const lazy = { attachments: { photos: { download: 'lazy' as const, eagerBelowBytes: 0 } } };
    const tabs = [await device(server.url, name, storage, true, lazy), await device(server.url, name, storage, true, lazy)];
    await waitFor(() => tabs.some((tab) => tab.sync.getStatus().leader), 'a tab to lead', 20_000);
    const follower = tabs.find((tab) => !tab.sync.getStatus().leader)!;
    const content = randomBytes(40_000);
    const doc = await alice.photos.insert({ id: 'p1', title: 'tank' });
    await doc.putAttachment({ id: 'tank.jpg', type: 'image/jpeg', data: new Blob([content], { type: 'image/jpeg' }) });
    await waitFor(async () => (await follower.photos.findOne('p1').exec())?.getAttachment('tank.jpg') != null, 'the metadata in the follower tab', 20_000);
    const placeholder = (await follower.photos.findOne('p1').exec())!.getAttachment('tank.jpg')!;
    expect(parsePlaceholder(placeholder.digest)).toEqual({ digest: sha256(content), length: content.length });
    const data = new Uint8Array(await (await placeholder.getData()).arrayBuffer());
    expect(sha256(data)).toBe(sha256(content));
  }, 60_000);
});
