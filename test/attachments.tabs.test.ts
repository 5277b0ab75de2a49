/**
 * Attachments across tabs: only the leading tab transfers content, and a
 * tab that does not lead gets a lazy attachment by asking it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { addRxPlugin } from 'rxdb';
import { RxDBDevModePlugin, disableWarnings } from 'rxdb/plugins/dev-mode';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { wrappedValidateAjvStorage } from 'rxdb/plugins/validate-ajv';
import { describe, expect, it } from 'vitest';
import { parsePlaceholder } from '../src/shared/attachments.js';
import { photoDevicesPerTest } from './fixtures/photo-devices.js';
import { startServer, uniqueName, waitFor, type TestServer } from './helpers.js';

// Two tabs of one database in one process need ignoreDuplicate, which only dev-mode allows.
disableWarnings();
addRxPlugin(RxDBDevModePlugin);

let server: TestServer | undefined;

const device = photoDevicesPerTest(async () => {
  await server?.stop();
  server = undefined;
});

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe('attachments across tabs', () => {
  it('a tab that does not lead gets a lazy attachment through the tab that does', async () => {
    server = await startServer();
    const alice = await device(server.url, { storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }) });
    const name = uniqueName('tabs');
    const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    const tab = { storage, tabOf: name, attachments: { photos: { download: 'lazy' as const, eagerBelowBytes: 0 } } };
    const tabs = [await device(server.url, tab), await device(server.url, tab)];
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
