/**
 * The conformance suite every BlobStore passes. It states the contract (see
 * `BlobStore`) as Vitest tests; the memory, file and PostgreSQL stores run
 * it, and so should yours:
 *
 * ```ts
 * // my-blob-store.test.ts (needs vitest and fast-check: npm i -D vitest fast-check)
 * import { runBlobStoreConformance } from 'rxdb-offline-sync/testing';
 *
 * runBlobStoreConformance('my store', async () => {
 *   const where = freshPlace();
 *   return {
 *     store: new MyBlobStore(where),
 *     reopen: async () => new MyBlobStore(where), // durable stores only
 *     cleanup: async () => removeData(where),
 *   };
 * });
 * ```
 */
import { afterEach, beforeEach, describe } from 'vitest';
import type { BlobStore } from '../server/blobs/types.js';
import type { BlobConformance, BlobStoreUnderTest } from './blob-harness.js';
import { blobOwnerTests } from './suites/blob-owners.js';
import { blobTransferTests } from './suites/blob-transfers.js';

export type { BlobStoreUnderTest };

/**
 * Declares the suite, as `describe('<name>: BlobStore conformance')`.
 * `setup` runs before every test and gives a new, empty store; its cleanup
 * runs after.
 */
export function runBlobStoreConformance(name: string, setup: () => BlobStoreUnderTest | Promise<BlobStoreUnderTest>): void {
  describe(`${name}: BlobStore conformance`, () => {
    let current: BlobStoreUnderTest;
    let store: BlobStore;

    const conformance: BlobConformance = {
      get store() {
        return store;
      },
      get durable() {
        return current.reopen !== undefined;
      },
      async reopen() {
        if (!current.reopen) throw new Error(`${name}: reopen() needs a setup that can reopen its store`);
        await store.close();
        store = await current.reopen();
        await store.init();
        return store;
      },
    };

    beforeEach(async () => {
      current = await setup();
      store = current.store;
      await store.init();
    });
    afterEach(async () => {
      // The store in use now, which a reopen may have replaced.
      await (current.cleanup ? current.cleanup() : store.close());
    });

    blobTransferTests(conformance);
    blobOwnerTests(conformance);
  });
}
