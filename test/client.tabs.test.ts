import { addRxPlugin, type RxDatabase } from 'rxdb';
import { RxDBDevModePlugin, disableWarnings } from 'rxdb/plugins/dev-mode';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { wrappedValidateAjvStorage } from 'rxdb/plugins/validate-ajv';
import { describe, expect, it, vi } from 'vitest';
import { MetaStore, META_SCHEMA, META_SCHEMA_V0, openInstance } from '../src/client/meta-store.js';
import { closeAfterEach, metaRecords, openDatabase, sleep, startClient, startServer, toEarlierLayout, uniqueName, waitFor, type TestClient, type TestServer } from './helpers.js';

// Two "tabs" of one database in one process: RxDB only allows that in dev-mode (ignoreDuplicate).
disableWarnings();
addRxPlugin(RxDBDevModePlugin);

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

describe('several tabs of one database', () => {
  it('only the elected leader replicates; a write in another tab still reaches the server once', async () => {
    server = await startServer();
    const name = uniqueName('tabs');
    const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    const tab1 = await startClient(server.url, { name, multiInstance: true, storage });
    const tab2 = await startClient(server.url, { name, multiInstance: true, storage });
    clients.push(tab1, tab2);
    await waitFor(() => tab1.sync.getStatus().leader || tab2.sync.getStatus().leader, 'a leader');
    await sleep(200);
    const [leader, follower] = tab1.sync.getStatus().leader ? [tab1, tab2] : [tab2, tab1];
    expect(follower.sync.getStatus().leader).toBe(false);
    expect(server.server.getClientsCount()).toBe(1);
    expect(await follower.sync.syncNow()).toMatchObject({ success: false, error: { code: 'DISABLED' } });
    // The calls that change the log are the leader's too: it keeps the log and writes it over.
    const started = Date.now();
    await expect(follower.sync.clearPendingEvents()).rejects.toMatchObject({ code: 'DISABLED', message: expect.stringContaining('another tab') });
    await expect(follower.sync.clearRejectedEvents()).rejects.toMatchObject({ code: 'DISABLED' });
    await expect(follower.sync.resolveConflict('conflict|todos|none', 'keep-local')).rejects.toMatchObject({ code: 'DISABLED' });
    // Told at once: the election is over.
    expect(Date.now() - started).toBeLessThan(1000);

    // The leader logs another tab's write from storage, not from the change event that reached it later.
    const reads = vi.spyOn(leader.todos.storageInstance, 'findDocumentsById');
    const readIds = () => reads.mock.calls.flatMap(([ids]) => ids);
    await follower.todos.insert({ id: 'from-follower', title: 'written in the other tab', done: false });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the follower write to reach the server');
    await sleep(200);
    expect(await server.server.getStorage().countEvents()).toBe(1);
    expect(leader.sync.getStatus().pendingEvents).toBe(0);
    expect(readIds()).toContain('from-follower');
    // Its own writes it logs from their change events.
    await leader.todos.insert({ id: 'from-leader', title: 'written in the leading tab', done: false });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 2, 'the leader write to reach the server');
    expect(readIds()).not.toContain('from-leader');
    reads.mockRestore();

    const other = await startClient(server.url, { storage });
    clients.push(other);
    await other.todos.insert({ id: 'from-elsewhere', title: 'remote', done: false });
    await waitFor(async () => (await follower.todos.findOne('from-elsewhere').exec()) !== null, 'the follower to see a remote write through the shared storage');
  });

  it('a tab that takes over the lead goes on from what the last leader logged and sent', async () => {
    server = await startServer();
    const name = uniqueName('handover');
    const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    const tab1 = await startClient(server.url, { name, multiInstance: true, storage, autoSync: false });
    await waitFor(() => tab1.sync.getStatus().leader, 'tab1 to lead');
    await tab1.todos.insert({ id: 'y', title: 'v1', done: false });
    await waitFor(() => tab1.sync.getStatus().pendingEvents === 1, 'v1 to be logged');
    // tab2 starts while v1 is pending, and reads the log as it is then.
    const tab2 = await startClient(server.url, { name, multiInstance: true, storage });
    clients.push(tab2);
    await sleep(100);
    expect(tab2.sync.getStatus().leader).toBe(false);
    expect((await tab1.sync.syncNow()).success).toBe(true);
    await (await tab1.todos.findOne('y').exec())!.patch({ title: 'v2' });
    await waitFor(() => tab1.sync.getStatus().pendingEvents === 1, 'v2 to be logged');
    await tab1.close();

    await waitFor(() => tab2.sync.getStatus().leader, 'tab2 to take over', 15_000);
    await waitFor(async () => (await server!.server.getStorage().getHeads('todos', ['y']))[0]?.data.title === 'v2', 'v2 to reach the server');
    await waitFor(() => tab2.sync.getStatus().pendingEvents === 0, 'tab2 to have nothing pending');
    expect(await server.server.getStorage().countEvents()).toBe(2);
  });

  it('a store of an earlier release is copied by the tab that leads, once a tab of that release no longer does', async () => {
    server = await startServer();
    const name = uniqueName('upgrade');
    const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    const before = await startClient(server.url, { name, multiInstance: true, storage });
    await waitFor(() => before.sync.getStatus().leader && before.sync.getStatus().lastSyncTime !== null, 'the first tab to lead and sync');
    await before.todos.insert({ id: 'synced', title: 'synced', done: false });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the first write to reach the server');
    before.sync.disable();
    await before.todos.insert({ id: 'offline', title: 'written offline', done: false });
    await waitFor(() => before.sync.getStatus().pendingEvents === 1, 'the offline write to be logged');
    await before.close();
    await toEarlierLayout(name, storage);

    // A tab of the earlier release leads (it writes the old store); a tab of this release opens beside it.
    const earlier = (await openDatabase(name, true, storage)) as unknown as RxDatabase;
    await earlier.waitForLeadership();
    const tab = await startClient(server.url, { name, multiInstance: true, storage });
    clients.push(tab);
    await sleep(300);
    expect(tab.sync.getStatus().leader).toBe(false);
    const rawCount = async (schema: typeof META_SCHEMA) => {
      const instance = await openInstance(tab.db as unknown as RxDatabase, schema);
      const count = (await metaRecords(instance, schema)).length;
      await instance.close();
      return count;
    };
    // Left alone while the earlier tab leads.
    expect(await rawCount(META_SCHEMA_V0)).toBeGreaterThan(0);
    expect(await rawCount(META_SCHEMA)).toBe(0);

    await earlier.close();
    await waitFor(() => tab.sync.getStatus().leader, 'the tab of this release to lead', 15_000);
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 2, 'the offline write to reach the server');
    await waitFor(() => tab.sync.getStatus().pendingEvents === 0, 'nothing pending');
    await sleep(200);
    expect(await server.server.getStorage().countEvents()).toBe(2);
    expect(await rawCount(META_SCHEMA_V0)).toBe(0);
    expect(new Set((await server.server.getStorage().getEventsAfter(0)).map((event) => event.clientId)).size).toBe(1);
  });

  it('a tab elected later whose storage fails to prepare reports it and tries again, then syncs', async () => {
    server = await startServer();
    const failing = vi.spyOn(MetaStore.prototype, 'upgrade').mockRejectedValueOnce(new Error('the disk is full'));
    try {
      const tab = await startClient(server.url, { name: uniqueName('retry'), multiInstance: true, storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }), retry: { maxRetries: 5, retryDelay: 1000, useExponentialBackoff: false } });
      clients.push(tab);
      await waitFor(() => tab.sync.getStatus().error?.message.includes('the disk is full') ?? false, 'the failure to be reported');
      expect(tab.sync.getStatus().leader).toBe(false);
      // This tab leads: asked meanwhile, it says what failed, not that another tab leads.
      expect(await tab.sync.syncNow()).toMatchObject({ success: false, error: { message: expect.stringContaining('the disk is full') } });
      await expect(tab.sync.clearPendingEvents()).rejects.toThrow(/the disk is full/);
      await waitFor(() => tab.sync.getStatus().leader && tab.sync.getStatus().connected, 'the tab to lead after all');
      expect(tab.sync.getStatus().error).toBeNull();
      expect(failing).toHaveBeenCalledTimes(2);
      await tab.todos.insert({ id: 'after', title: 'written after the retry', done: false });
      await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the write to reach the server');
    } finally {
      failing.mockRestore();
    }
  });

  it('the elected tab, while a long first copy runs, is waited for by syncNow() and clearPendingEvents()', async () => {
    server = await startServer();
    const upgrade = MetaStore.prototype.upgrade;
    const slow = vi.spyOn(MetaStore.prototype, 'upgrade').mockImplementation(async function (this: MetaStore) {
      await sleep(3500);
      return upgrade.call(this);
    });
    try {
      const tab = await startClient(server.url, { name: uniqueName('slow'), multiInstance: true, storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }) });
      clients.push(tab);
      await tab.todos.insert({ id: 'early', title: 'written while the store is prepared', done: false });
      expect(tab.sync.getStatus().leader).toBe(false);
      expect(await tab.sync.syncNow()).toMatchObject({ success: true });
      expect(tab.sync.getStatus().leader).toBe(true);
      expect(await server.server.getStorage().countEvents()).toBe(1);
      expect(await tab.sync.clearPendingEvents()).toBe(0);
      expect(slow).toHaveBeenCalledTimes(1);
    } finally {
      slow.mockRestore();
    }
  });
});
