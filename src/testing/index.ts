/**
 * `rxdb-offline-sync/testing`: the conformance suite every SyncStorage
 * passes. It states the storage contract (see `SyncStorage`) as Vitest
 * tests; the memory, SQLite and PostgreSQL storages run it, and so should
 * yours:
 *
 * ```ts
 * // my-storage.test.ts (needs vitest and fast-check: npm i -D vitest fast-check)
 * import { runStorageConformance } from 'rxdb-offline-sync/testing';
 *
 * runStorageConformance('my storage', async () => {
 *   const path = freshPath();
 *   return {
 *     storage: new MyStorage(path),
 *     reopen: async () => new MyStorage(path), // durable storages only
 *     cleanup: async () => removeData(path),
 *   };
 * });
 * ```
 */
import { afterEach, beforeEach, describe } from 'vitest';
import type { SyncStorage } from '../server/storage/types.js';
import { acceptedSeq, type Conformance, type OpenedStorage, type StorageUnderTest } from './harness.js';
import { durabilityTests } from './suites/durability.js';
import { readTests } from './suites/reads.js';
import { saveTests } from './suites/saves.js';
import { scopedReadTests } from './suites/scoped.js';

export type { StorageUnderTest };
export { runBlobStoreConformance, type BlobStoreUnderTest } from './blobs.js';

/** Without a cleanup of its own, a storage is closed after use. */
function opened(under: StorageUnderTest): OpenedStorage {
  return { storage: under.storage, cleanup: async () => (under.cleanup ? under.cleanup() : under.storage.close()) };
}

/**
 * Declares the suite, as `describe('<name>: SyncStorage conformance')`.
 * `setup` runs before every test (and once per case of the randomized
 * ones) and gives a new, empty storage; its cleanup runs after.
 */
export function runStorageConformance(name: string, setup: () => StorageUnderTest | Promise<StorageUnderTest>): void {
  describe(`${name}: SyncStorage conformance`, () => {
    let current: StorageUnderTest;
    let storage: SyncStorage;

    const conformance: Conformance = {
      get storage() {
        return storage;
      },
      get durable() {
        return current.reopen !== undefined;
      },
      async reopen() {
        if (!current.reopen) throw new Error(`${name}: reopen() needs a setup that can reopen its storage`);
        await storage.close();
        storage = await current.reopen();
        await storage.init();
        return storage;
      },
      open: async () => opened(await setup()),
      saveAccepted: async (...events) => (await storage.saveEvents(events)).map(acceptedSeq),
    };

    beforeEach(async () => {
      current = await setup();
      storage = current.storage;
      await storage.init();
    });
    afterEach(async () => {
      // The storage in use now, which a reopen may have replaced.
      await (current.cleanup ? current.cleanup() : storage.close());
    });

    saveTests(conformance);
    readTests(conformance);
    durabilityTests(conformance);
    scopedReadTests(conformance);
  });
}
