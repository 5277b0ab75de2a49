/**
 * `npm run demo`: two devices edit the same todo while one is offline, and
 * the conflict is settled by last-write-wins when it reconnects. Everything
 * is real: a sync server on a loopback port, two RxDB databases, socket.io.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { styleText } from 'node:util';
import { addRxPlugin, createRxDatabase, type RxCollection } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { RxDBOfflineSyncPlugin, createSyncPlugin, lastWriteWins, type Conflict, type SyncApi } from '../src/client/index.js';
import { createSyncServer } from '../src/server/index.js';

interface Todo {
  id: string;
  title: string;
  done: boolean;
}

const color = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (format: Parameters<typeof styleText>[0], text: string) => (color ? styleText(format, text) : text);
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, process.env.CI ? 0 : ms));

let stepNumber = 0;
async function step(text: string): Promise<void> {
  await pause(700);
  console.log(`\n${paint('bold', `${String(++stepNumber).padStart(2)}.`)} ${text}`);
}
const note = (who: string, text: string) => console.log(`    ${paint('dim', '→')} ${paint('cyan', who.padEnd(6))} ${text}`);

async function waitFor(condition: () => boolean | Promise<boolean>, what: string, timeout = 10_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

addRxPlugin(RxDBOfflineSyncPlugin);

interface Device {
  name: string;
  todos: RxCollection<Todo>;
  sync: SyncApi;
  title(): Promise<string | undefined>;
  rename(title: string): Promise<void>;
  close(): Promise<void>;
}

async function openDevice(name: string, serverUrl: string): Promise<Device> {
  const db = await createRxDatabase<{ todos: RxCollection<Todo> }>({ name: `demo-${name.toLowerCase()}-${Date.now()}`, storage: getRxStorageMemory(), multiInstance: false });
  await db.addCollections({
    todos: {
      schema: {
        version: 0,
        primaryKey: 'id',
        type: 'object',
        properties: { id: { type: 'string', maxLength: 64 }, title: { type: 'string' }, done: { type: 'boolean' } },
        required: ['id', 'title', 'done'],
      },
    },
  });
  const sync = await db.addPlugin(
    createSyncPlugin({
      serverUrl,
      collections: ['todos'],
      // The default strategy, last-write-wins, wrapped only to narrate what it decides.
      conflictResolution: (conflict: Conflict) => {
        const keepLocal = lastWriteWins(conflict).action === 'keep-local' || !conflict.remote;
        const winner = keepLocal ? conflict.local : conflict.remote!;
        note(name, `conflict on "${conflict.documentId}": mine "${conflict.local.data.title}" vs the server's "${conflict.remote?.data.title}"`);
        note(name, `last-write-wins keeps ${paint('bold', `"${winner.data.title}"`)} (${keepLocal ? 'mine is' : "the server's is"} the later write by hybrid logical clock)`);
        return winner.deleted ? null : winner.data;
      },
      retry: { maxRetries: 5, retryDelay: 100, useExponentialBackoff: true },
      logging: { enabled: false },
    }),
  );
  return {
    name,
    todos: db.todos,
    sync,
    title: async () => (await db.todos.findOne('milk').exec())?.title,
    rename: async (title) => {
      await (await db.todos.findOne('milk').exec())!.incrementalPatch({ title });
    },
    close: () => db.close().then(() => undefined),
  };
}

const httpServer = createServer();
const server = createSyncServer({ httpServer, logging: { enabled: false } });
await server.start();
await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
server.events.on('push', (push) => {
  if (push.conflicts > 0) note('server', paint('yellow', `refused ${push.conflicts} event(s) as a conflict: based on a version that is no longer the latest`));
});

console.log(paint('bold', 'rxdb-offline-sync demo: two devices, one todo, one of them offline'));

await step(`A sync server listens on ${url} (memory storage).`);
const alice = await openDevice('Alice', url);
const bob = await openDevice('Bob', url);
await waitFor(() => alice.sync.getStatus().connected && bob.sync.getStatus().connected, 'both devices to connect');
note('Alice', 'connected');
note('Bob', 'connected');

await step('Alice adds a todo: "Buy milk".');
await alice.todos.insert({ id: 'milk', title: 'Buy milk', done: false });
await waitFor(async () => (await bob.title()) === 'Buy milk', 'Bob to receive the todo');
note('Bob', `sees it live: "${await bob.title()}"`);

await step(`Bob's train enters a tunnel: ${paint('yellow', 'Bob goes offline')}.`);
bob.sync.disable();
note('Bob', `connected: ${bob.sync.getStatus().connected}`);

await step('Alice renames it "Buy oat milk". She is online, so the server has it at once.');
await alice.rename('Buy oat milk');
await waitFor(() => alice.sync.getStatus().pendingEvents === 0, 'Alice to push');
note('Alice', `pending changes: ${alice.sync.getStatus().pendingEvents}`);

await pause(50);
await step('A moment later Bob, still offline, renames the same todo "Buy milk and eggs".');
await bob.rename('Buy milk and eggs');
await waitFor(() => bob.sync.getStatus().pendingEvents === 1, "Bob's change to be logged");
note('Bob', `pending changes: ${bob.sync.getStatus().pendingEvents} (kept in his database's pending-event log)`);
note('Alice', `still sees "${await alice.title()}"`);

await step(`The train leaves the tunnel: ${paint('green', 'Bob comes back online')} and pushes his change.`);
bob.sync.enable();
await waitFor(async () => bob.sync.getStatus().pendingEvents === 0 && (await alice.title()) === 'Buy milk and eggs', 'the devices to converge');

await step('Both devices agree.');
note('Alice', `"${await alice.title()}"`);
note('Bob', `"${await bob.title()}"`);

await step(`Round two: ${paint('yellow', 'Bob goes offline')} again and renames it "Buy milk (Bob, offline)".`);
bob.sync.disable();
await bob.rename('Buy milk (Bob, offline)');
await waitFor(() => bob.sync.getStatus().pendingEvents === 1, "Bob's change to be logged");
note('Bob', 'pending changes: 1');

await pause(50);
await step('Afterwards Alice, online, renames it "Buy soy milk".');
await alice.rename('Buy soy milk');
await waitFor(() => alice.sync.getStatus().pendingEvents === 0, 'Alice to push');

await step(`${paint('green', 'Bob comes back online')}. His edit reaches the server later, but it was made earlier.`);
bob.sync.enable();
await waitFor(async () => bob.sync.getStatus().pendingEvents === 0 && (await bob.title()) === 'Buy soy milk', 'the devices to converge');

await step('Both devices agree again: the later write won, not the later arrival.');
note('Alice', `"${await alice.title()}"`);
note('Bob', `"${await bob.title()}"`);
const storage = server.getStorage();
note('server', `${await storage.countEvents()} events stored, stats ${JSON.stringify(server.getStats())}`);

await Promise.all([alice.close(), bob.close()]);
await server.stop();
httpServer.closeAllConnections();
await new Promise<void>((resolve) => httpServer.close(() => resolve()));
console.log(`\n${paint('bold', 'Done.')} Try it in a browser: ${paint('cyan', 'npm start')}, then open the URL in two browsers.`);
