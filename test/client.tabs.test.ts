import { addRxPlugin, type RxDatabase } from 'rxdb';
import { RxDBDevModePlugin, disableWarnings } from 'rxdb/plugins/dev-mode';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { wrappedValidateAjvStorage } from 'rxdb/plugins/validate-ajv';
import { filter, firstValueFrom } from 'rxjs';
import { describe, expect, it, vi } from 'vitest';
import { SyncError, type SyncApi, type SyncPluginOptions, type SyncStatus } from '../src/client/index.js';
import { MetaStore } from '../src/client/meta-store.js';
import { MemorySyncStorage } from '../src/server/index.js';
import { closeAfterEach, listsPending, openDatabase, sleep, startClient, startServer, uniqueName, waitFor, type TestClient, type TestServer, outcome } from './helpers.js';

// Two "tabs" of one database in one process: RxDB only allows that in dev-mode (ignoreDuplicate).
disableWarnings();
addRxPlugin(RxDBDevModePlugin);

let server: TestServer | undefined;
const clients: TestClient[] = [];

closeAfterEach(clients, () => server);

/** `count` tabs of one new database (closed after the test), once one of them leads. */
async function openTabs(url: string, count: number, options: Partial<SyncPluginOptions> = {}) {
  const name = uniqueName('tabs');
  const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
  const tabs: TestClient[] = [];
  for (let i = 0; i < count; i++) {
    const tab = await startClient(url, { name, multiInstance: true, storage, ...options });
    clients.push(tab);
    tabs.push(tab);
  }
  await waitFor(() => tabs.some((tab) => tab.sync.getStatus().leader), 'a tab to lead');
  const leader = tabs.find((tab) => tab.sync.getStatus().leader)!;
  return { leader, followers: tabs.filter((tab) => tab !== leader), name, storage };
}

/**
 * A server, and a first tab of a new database that leads with `todo`
 * written and logged, not pushed (autoSync off); `openTab` opens more tabs of
 * it (closed after the test). The first tab is the test's to close.
 */
async function leaderWithOneLogged(todo: { id: string; title: string; done: boolean }) {
  server = await startServer();
  const url = server.url;
  const name = uniqueName('handover');
  const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
  const tab1 = await startClient(url, { name, multiInstance: true, storage, autoSync: false });
  await waitFor(() => tab1.sync.getStatus().leader, 'tab1 to lead');
  await tab1.todos.insert(todo);
  await waitFor(() => tab1.sync.getStatus().pendingEvents === 1, `${todo.id} to be logged`);
  const openTab = async (options: Partial<SyncPluginOptions>) => {
    const tab = await startClient(url, { name, multiInstance: true, storage, ...options });
    clients.push(tab);
    return tab;
  };
  return { tab1, openTab };
}

/** Resolves with the time at which `sync` first shows a status that meets `condition`. */
function whenStatus(sync: SyncApi, condition: (status: SyncStatus) => boolean): Promise<number> {
  return firstValueFrom(sync.status$.pipe(filter(condition))).then(() => Date.now());
}

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
    // Asked in the follower, the leader syncs; the follower does not connect.
    expect(await follower.sync.syncNow()).toMatchObject({ success: true, error: null });
    expect(server.server.getClientsCount()).toBe(1);
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
    const { tab1, openTab } = await leaderWithOneLogged({ id: 'y', title: 'v1', done: false });
    // tab2 starts while v1 is pending, and reads the log as it is then.
    const tab2 = await openTab({});
    await sleep(100);
    expect(tab2.sync.getStatus().leader).toBe(false);
    expect((await tab1.sync.syncNow()).success).toBe(true);
    await (await tab1.todos.findOne('y').exec())!.patch({ title: 'v2' });
    await waitFor(() => tab1.sync.getStatus().pendingEvents === 1, 'v2 to be logged');
    await tab1.close();

    await waitFor(() => tab2.sync.getStatus().leader, 'tab2 to take over', 15_000);
    await waitFor(async () => (await server!.server.getStorage().getHeads('todos', ['y']))[0]?.data.title === 'v2', 'v2 to reach the server');
    await waitFor(() => tab2.sync.getStatus().pendingEvents === 0, 'tab2 to have nothing pending');
    expect(await server!.server.getStorage().countEvents()).toBe(2);
  });

  it('a tab that takes over the lead lists the pending documents of the log it reads, not of the one it read at start', async () => {
    const { tab1, openTab } = await leaderWithOneLogged({ id: 'x', title: 'first', done: false });
    // tab2 reads the log at start, x in it: as many documents as the log it will read on taking over.
    const tab2 = await openTab({ autoSync: false });
    expect((await tab1.sync.syncNow()).success).toBe(true);
    await tab1.todos.insert({ id: 'z', title: 'second', done: false });
    await waitFor(() => listsPending(tab2.sync, { todos: ['z'] }), 'tab2 to show the leader\'s list');
    await tab1.close();

    await waitFor(() => tab2.sync.getStatus().leader, 'tab2 to take over', 15_000);
    await waitFor(() => listsPending(tab2.sync, { todos: ['z'] }), 'tab2 to list z as it leads');
  });

  it('a tab elected later whose storage fails to prepare reports it and tries again, then syncs', async () => {
    server = await startServer();
    // The first write of the plugin's storage is the elected tab's, as it prepares.
    const failing = vi.spyOn(MetaStore.prototype, 'write').mockRejectedValueOnce(new Error('the disk is full'));
    try {
      const tab = await startClient(server.url, { name: uniqueName('retry'), multiInstance: true, storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }), retry: { maxRetries: 5, retryDelay: 1000, useExponentialBackoff: false } });
      clients.push(tab);
      await waitFor(() => tab.sync.getStatus().error?.message.includes('the disk is full') ?? false, 'the failure to be reported');
      expect(tab.sync.getStatus().leader).toBe(false);
      // This tab leads: asked meanwhile, it says what failed, not that another tab leads.
      await expect(tab.sync.syncNow()).rejects.toMatchObject({ message: expect.stringContaining('the disk is full') });
      await expect(tab.sync.clearPendingEvents()).rejects.toThrow(/the disk is full/);
      await waitFor(() => tab.sync.getStatus().leader && tab.sync.getStatus().connected, 'the tab to lead after all');
      expect(tab.sync.getStatus().error).toBeNull();
      expect(failing.mock.calls.length).toBeGreaterThanOrEqual(2);
      await tab.todos.insert({ id: 'after', title: 'written after the retry', done: false });
      await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the write to reach the server');
    } finally {
      failing.mockRestore();
    }
  });

  it('the elected tab, while it prepares its storage slowly, is waited for by syncNow() and clearPendingEvents()', async () => {
    server = await startServer();
    const write = MetaStore.prototype.write;
    // The first write of the plugin's storage is the elected tab's, as it prepares.
    const slow = vi.spyOn(MetaStore.prototype, 'write').mockImplementationOnce(async function (this: MetaStore, writes) {
      await sleep(3500);
      return write.call(this, writes);
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
      expect(slow).toHaveBeenCalled();
    } finally {
      slow.mockRestore();
    }
  });
});

describe('every tab shows and steers the one sync of its database', () => {
  it('every tab lists the documents that wait for the server, and none once the server has them', async () => {
    server = await startServer();
    const { leader, followers } = await openTabs(server.url, 2);
    const follower = followers[0]!;
    const seen: string[][] = [];
    const watching = follower.sync.pendingDocuments$.subscribe((pending) => seen.push([...(pending.todos ?? [])]));
    try {
      leader.sync.disable();
      await waitFor(() => !follower.sync.getStatus().enabled, 'the switch to reach the follower');
      // Written in the tab that does not lead: the leader logs it, and both tabs list it.
      await follower.todos.insert({ id: 'b', title: 'from the follower', done: false });
      await leader.todos.insert({ id: 'a', title: 'from the leader', done: false });
      for (const tab of [leader, follower]) {
        await waitFor(() => listsPending(tab.sync, { todos: ['a', 'b'] }), `${tab.name} to list both`);
      }
      follower.sync.enable();
      for (const tab of [leader, follower]) await waitFor(() => Object.keys(tab.sync.getPendingDocuments()).length === 0, `${tab.name} to list none`);
      expect(seen.at(-1)).toEqual([]);
      expect(seen.some((ids) => ids.length === 2)).toBe(true);
    } finally {
      watching.unsubscribe();
    }
  });

  it('"work offline" in a follower stops the leader at once, and the follower shows the leader\'s status within 100 ms', async () => {
    server = await startServer();
    const { leader, followers: [follower] } = await openTabs(server.url, 2);
    await waitFor(() => follower!.sync.getStatus().connected && follower!.sync.getStatus().lastSyncTime !== null, 'the follower to show the leader connected');
    expect(follower!.sync.getStatus().leader).toBe(false);

    const asked = Date.now();
    const stopped = whenStatus(leader.sync, (status) => !status.enabled && !status.connected);
    follower!.sync.disable();
    expect(follower!.sync.getStatus().enabled).toBe(false);
    expect((await stopped) - asked).toBeLessThan(100);
    await waitFor(() => server!.server.getClientsCount() === 0, 'the leader to disconnect');

    // Written in the follower, logged by the leader, which is offline: both tabs count it, nothing is pushed.
    const counted = Promise.all([whenStatus(leader.sync, (status) => status.pendingEvents === 1), whenStatus(follower!.sync, (status) => status.pendingEvents === 1)]);
    await follower!.todos.insert({ id: 'offline', title: 'written in the follower while offline', done: false });
    const [leaderCounted, followerCounted] = await counted;
    expect(followerCounted - leaderCounted).toBeLessThan(100);
    expect(follower!.sync.getStatus()).toMatchObject({ enabled: false, connected: false, leader: false, pendingEvents: 1 });
    expect(await server.server.getStorage().countEvents()).toBe(0);

    // On again, from the follower: the leader connects and pushes, and the follower shows it.
    const synced = leader.sync.getStatus().lastSyncTime!;
    follower!.sync.enable();
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the write to reach the server');
    await waitFor(() => leader.sync.getStatus().pendingEvents === 0 && leader.sync.getStatus().lastSyncTime! > synced, 'the leader to sync');
    await waitFor(() => follower!.sync.getStatus().lastSyncTime === leader.sync.getStatus().lastSyncTime, 'the follower to show the leader\'s last sync');
    expect(follower!.sync.getStatus()).toMatchObject({ enabled: true, connected: true, leader: false, pendingEvents: 0 });
  });

  it('a follower shows the changes the server refused and the conflicts the leader keeps, with the leader\'s error', async () => {
    server = await startServer({ authorize: async (_user: unknown, _collection: string, operation: string, document: Record<string, unknown>) => operation === 'read' || document.title !== 'forbidden' });
    const { leader, followers: [follower] } = await openTabs(server.url, 2, { conflictResolution: 'manual' });
    await follower!.todos.insert({ id: 'refused', title: 'forbidden', done: false });
    await waitFor(() => follower!.sync.getStatus().rejectedEvents === 1 && follower!.sync.getStatus().error !== null, 'the follower to show the refusal');
    const error = follower!.sync.getStatus().error!;
    expect(error).toBeInstanceOf(SyncError);
    expect(error.toWire()).toEqual(leader.sync.getStatus().error!.toWire());
    expect(error.message).toContain('refused by the server');

    // Both sides change one document: the leader keeps the conflict, and the follower counts it.
    await follower!.todos.insert({ id: 'both', title: 'base', done: false });
    const other = await startClient(server.url, { storage: wrappedValidateAjvStorage({ storage: getRxStorageMemory() }) });
    clients.push(other);
    await waitFor(async () => (await other.todos.findOne('both').exec()) !== null, 'the other device to get the document');
    follower!.sync.disable();
    await waitFor(() => !leader.sync.getStatus().connected, 'the leader to go offline');
    await (await other.todos.findOne('both').exec())!.patch({ title: 'from the other device' });
    await waitFor(() => other.sync.getStatus().pendingEvents === 0, 'the other device to push');
    await (await follower!.todos.findOne('both').exec())!.patch({ title: 'from the follower' });
    await waitFor(() => follower!.sync.getStatus().pendingEvents === 1, 'the follower to show the edit pending');
    follower!.sync.enable();
    await waitFor(() => follower!.sync.getStatus().conflicts === 1, 'the follower to show the conflict');
    expect(leader.sync.getConflicts()).toHaveLength(1);
  });

  it('syncNow() in a follower asks the leader and resolves with its result, a failure too', async () => {
    server = await startServer();
    const { leader, followers: [follower] } = await openTabs(server.url, 2, { autoSync: false, requestTimeout: 1000 });
    await follower!.todos.insert({ id: 'asked', title: 'pushed when the follower asks', done: false });
    await waitFor(() => follower!.sync.getStatus().pendingEvents === 1, 'the follower to show the write pending');
    expect(server.server.getClientsCount()).toBe(0);
    expect(await follower!.sync.syncNow()).toEqual({ success: true, error: null, syncedEvents: 1 });
    expect(await server.server.getStorage().countEvents()).toBe(1);
    expect(server.server.getClientsCount()).toBe(1);
    await waitFor(() => follower!.sync.getStatus().pendingEvents === 0 && follower!.sync.getStatus().lastSyncTime === leader.sync.getStatus().lastSyncTime, 'the follower to show the sync');

    await server.stop();
    const failed = await outcome(follower!.sync.syncNow());
    expect(failed.success).toBe(false);
    expect(failed.error).toBeInstanceOf(SyncError);
    expect(['TIMEOUT', 'NOT_CONNECTED']).toContain(failed.error!.code);

    // Off, for the database: the follower says so itself.
    follower!.sync.disable();
    await expect(follower!.sync.syncNow()).rejects.toMatchObject({ code: 'DISABLED' });
  });

  it('syncNow() in a follower fails with TIMEOUT, saying why, when the leading tab does not answer', async () => {
    server = await startServer();
    const name = uniqueName('mute');
    const storage = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    // A tab without the plugin (or of another release of it) leads.
    const mute = (await openDatabase(name, true, storage)) as unknown as RxDatabase;
    try {
      await mute.waitForLeadership();
      const tab = await startClient(server.url, { name, multiInstance: true, storage });
      clients.push(tab);
      const started = Date.now();
      await expect(tab.sync.syncNow()).rejects.toMatchObject({ code: 'TIMEOUT', message: expect.stringContaining('no tab of this database took the sync within 3000 ms') });
      expect(Date.now() - started).toBeLessThan(6000);
    } finally {
      await mute.close();
    }
  });

  it('a request the leader took as it closed is answered by the tab that leads next', async () => {
    // The server never answers the first push: the leader is still syncing when it closes.
    const storage = new MemorySyncStorage();
    const save = storage.saveEvents.bind(storage);
    let pushes = 0;
    storage.saveEvents = (events) => (++pushes === 1 ? new Promise<never>(() => undefined) : save(events));
    server = await startServer({ storage });
    const { leader, followers } = await openTabs(server.url, 3, { autoSync: false, requestTimeout: 5000 });
    await followers[0]!.todos.insert({ id: 'asked', title: 'asked for before the leader closed', done: false });
    await waitFor(() => followers.every((tab) => tab.sync.getStatus().pendingEvents === 1), 'the write to be logged');
    // Both followers ask: one of them is elected next and syncs itself, the other asks it again.
    const asked = followers.map((tab) => tab.sync.syncNow());
    await waitFor(() => pushes === 1, 'the leader to push');
    await leader.close();
    for (const answer of await Promise.all(asked)) expect(answer).toMatchObject({ success: true, error: null });
    expect(await storage.countEvents()).toBe(1);
  });

  it('when the leading tab closes, the others show the status of the tab elected next, and it answers them', async () => {
    server = await startServer();
    const { leader, followers } = await openTabs(server.url, 3);
    await waitFor(() => followers.every((tab) => tab.sync.getStatus().connected), 'the followers to show the leader connected');
    await leader.close();
    await waitFor(() => followers.some((tab) => tab.sync.getStatus().leader), 'another tab to lead', 15_000);
    const follower = followers.find((tab) => !tab.sync.getStatus().leader)!;
    // The closing leader said it was offline, then gone: connected again is the next leader's.
    await waitFor(() => follower.sync.getStatus().connected, 'the follower to show the next leader connected');
    await follower.todos.insert({ id: 'after', title: 'written after the handover', done: false });
    expect(await follower.sync.syncNow()).toMatchObject({ success: true });
    expect(await server.server.getStorage().countEvents()).toBe(1);
    expect(follower.sync.getStatus()).toMatchObject({ leader: false, connected: true, pendingEvents: 0 });
  });

  it('the switch is the database\'s: a tab elected later and a reload obey it, and enable() in any tab turns it on', async () => {
    server = await startServer();
    const { leader, followers: [follower], name, storage } = await openTabs(server.url, 2);
    await waitFor(() => server!.server.getClientsCount() === 1, 'the leader to connect');
    follower!.sync.disable();
    await waitFor(() => server!.server.getClientsCount() === 0, 'the leader to disconnect');
    await follower!.todos.insert({ id: 'offline', title: 'written while off', done: false });
    await waitFor(() => leader.sync.getStatus().pendingEvents === 1, 'the leader to log the write');

    await leader.close();
    await waitFor(() => follower!.sync.getStatus().leader, 'the follower to take over', 15_000);
    expect(follower!.sync.getStatus()).toMatchObject({ enabled: false, connected: false, pendingEvents: 1 });
    await expect(follower!.sync.syncNow()).rejects.toMatchObject({ code: 'DISABLED' });
    expect(server.server.getClientsCount()).toBe(0);
    await follower!.close();

    const reloaded = await startClient(server.url, { name, multiInstance: true, storage });
    clients.push(reloaded);
    await waitFor(() => reloaded.sync.getStatus().leader, 'the reloaded tab to lead');
    expect(reloaded.sync.getStatus()).toMatchObject({ enabled: false, connected: false, pendingEvents: 1 });
    await expect(reloaded.sync.syncNow()).rejects.toMatchObject({ code: 'DISABLED' });

    // Turned on in a tab that does not lead: the leader connects and pushes what was written while off.
    const other = await startClient(server.url, { name, multiInstance: true, storage });
    clients.push(other);
    expect(other.sync.getStatus().enabled).toBe(false);
    other.sync.enable();
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the offline write to reach the server');
    expect(reloaded.sync.getStatus().enabled).toBe(true);
    await waitFor(() => other.sync.getStatus().pendingEvents === 0 && other.sync.getStatus().connected, 'the other tab to show the push');
  });

  it('the last sync time survives a reload, of one tab or of several, and a tab opened later shows the leader\'s', async () => {
    server = await startServer();
    const memory = wrappedValidateAjvStorage({ storage: getRxStorageMemory() });
    const single = await startClient(server.url, { storage: memory });
    expect((await single.sync.syncNow()).success).toBe(true);
    await single.close();
    const lastSingle = single.sync.getStatus().lastSyncTime;
    expect(lastSingle).not.toBeNull();
    const singleAgain = await startClient(server.url, { name: single.name, storage: memory, autoSync: false });
    clients.push(singleAgain);
    expect(singleAgain.sync.getStatus().lastSyncTime).toBe(lastSingle);

    const { leader, name, storage } = await openTabs(server.url, 1);
    await waitFor(() => leader.sync.getStatus().lastSyncTime !== null, 'the leader to sync');
    const later = await startClient(server.url, { name, multiInstance: true, storage });
    clients.push(later);
    await waitFor(() => later.sync.getStatus().lastSyncTime === leader.sync.getStatus().lastSyncTime, 'the tab opened later to show the leader\'s last sync');
    expect(later.sync.getStatus().leader).toBe(false);
    await leader.todos.insert({ id: 'x', title: 'synced before the reload', done: false });
    await waitFor(async () => (await server!.server.getStorage().countEvents()) === 1, 'the write to reach the server');
    await later.close();
    await leader.close();
    const last = leader.sync.getStatus().lastSyncTime;

    const reloaded = await startClient(server.url, { name, multiInstance: true, storage, autoSync: false });
    clients.push(reloaded);
    expect(reloaded.sync.getStatus().lastSyncTime).toBe(last);
    await waitFor(() => reloaded.sync.getStatus().leader, 'the reloaded tab to lead');
    expect(reloaded.sync.getStatus().lastSyncTime).toBe(last);
  });
});
