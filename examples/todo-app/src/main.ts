/** The todo list page: plain DOM, rendering the database and the sync status as they change. */
import type { RxDocument } from 'rxdb';
import type { SyncStatus } from 'rxdb-offline-sync';
import { openApp, type Todo } from './database.js';
import './style.css';

const params = new URLSearchParams(location.search);
/** `?device=2` opens a second database in this browser: a second "device" with its own IndexedDB. */
const device = params.get('device');
const dbName = device ? `todos-device-${device.replace(/[^a-z0-9]/gi, '').toLowerCase()}` : 'todos';
const serverUrl = params.get('server') ?? location.origin;
const offlineKey = `rxdb-offline-sync-demo:offline:${dbName}`;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  connection: $('connection'),
  offline: $<HTMLInputElement>('offline'),
  syncNow: $<HTMLButtonElement>('sync-now'),
  pending: $('pending'),
  lastSync: $('last-sync'),
  resolved: $('resolved'),
  openConflicts: $('open-conflicts'),
  error: $('error'),
  device: $('device'),
  form: $<HTMLFormElement>('add-form'),
  newTitle: $<HTMLInputElement>('new-title'),
  list: $<HTMLUListElement>('todos'),
  empty: $('empty'),
  log: $<HTMLOListElement>('log'),
};

function log(message: string): void {
  const item = document.createElement('li');
  const time = new Date().toLocaleTimeString();
  item.textContent = `${time}  ${message}`;
  ui.log.prepend(item);
  while (ui.log.children.length > 8) ui.log.lastElementChild!.remove();
}

function newId(): string {
  return crypto.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function ago(time: number | null): string {
  if (time === null) return 'never';
  const seconds = Math.max(0, Math.round((Date.now() - time) / 1000));
  if (seconds < 2) return 'just now';
  if (seconds < 90) return `${seconds} s ago`;
  return new Date(time).toLocaleTimeString();
}

// ---- sync status -------------------------------------------------------------------

let status: SyncStatus | undefined;
let resolvedConflicts = 0;

function renderStatus(): void {
  if (!status) return;
  // A follower tab shows the leading tab's status: the connection is the database's, not the tab's.
  const via = status.leader ? '' : ' · via another tab';
  const [label, state] = !status.enabled
    ? ['Offline', 'offline']
    : status.connected
      ? [`${status.syncing ? 'Online · syncing' : 'Online'}${via}`, 'online']
      : [`Connecting…${via}`, 'connecting'];
  ui.connection.textContent = label;
  ui.connection.dataset.state = state;
  ui.offline.checked = !status.enabled;
  ui.syncNow.disabled = !status.enabled;
  ui.pending.textContent = String(status.pendingEvents);
  ui.lastSync.textContent = ago(status.lastSyncTime);
  ui.resolved.textContent = String(resolvedConflicts);
  ui.openConflicts.textContent = String(status.conflicts);
  ui.error.hidden = !status.error;
  ui.error.textContent = status.error ? `${status.error.code}: ${status.error.message}` : '';
}

// ---- todo list ---------------------------------------------------------------------

const rows = new Map<string, HTMLLIElement>();

function createRow(doc: RxDocument<Todo>): HTMLLIElement {
  const row = document.createElement('li');
  row.dataset.id = doc.id;
  row.dataset.testid = 'todo';

  const toggle = document.createElement('input');
  toggle.type = 'checkbox';
  toggle.dataset.testid = 'toggle';
  toggle.setAttribute('aria-label', 'done');
  toggle.addEventListener('change', () => void current(row)?.incrementalPatch({ done: toggle.checked }));

  const title = document.createElement('input');
  title.className = 'title';
  title.dataset.testid = 'title';
  title.maxLength = 200;
  title.setAttribute('aria-label', 'title');
  const save = () => {
    const value = title.value.trim();
    const doc = current(row);
    if (!doc) return;
    if (!value) title.value = doc.title;
    else if (value !== doc.title) void doc.incrementalPatch({ title: value });
  };
  title.addEventListener('change', save);
  title.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') title.blur();
    if (event.key === 'Escape') {
      title.value = current(row)?.title ?? title.value;
      title.blur();
    }
  });

  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'delete';
  remove.dataset.testid = 'delete';
  remove.setAttribute('aria-label', 'delete');
  remove.textContent = '×';
  remove.addEventListener('click', () => void current(row)?.incrementalRemove());

  row.append(toggle, title, remove);
  return row;
}

const docs = new Map<string, RxDocument<Todo>>();
const current = (row: HTMLLIElement) => docs.get(row.dataset.id!);

function renderTodos(list: RxDocument<Todo>[]): void {
  const sorted = [...list].sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  docs.clear();
  for (const doc of sorted) docs.set(doc.id, doc);
  for (const [id, row] of rows) {
    if (!docs.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  for (const doc of sorted) {
    let row = rows.get(doc.id);
    if (!row) {
      row = createRow(doc);
      rows.set(doc.id, row);
    }
    const [toggle, title] = row.children as unknown as [HTMLInputElement, HTMLInputElement];
    toggle.checked = doc.done;
    row.classList.toggle('done', doc.done);
    // Do not overwrite what the user is typing.
    if (document.activeElement !== title) title.value = doc.title;
    ui.list.append(row);
  }
  ui.empty.hidden = sorted.length > 0;
}

// ---- start -------------------------------------------------------------------------

async function start(): Promise<void> {
  ui.device.textContent = `Database "${dbName}" · server ${serverUrl}`;
  if (typeof crypto.randomUUID !== 'function') {
    ui.error.hidden = false;
    ui.error.textContent = 'Open this page through localhost or HTTPS: browsers give crypto.randomUUID only to secure pages.';
  }
  const { db, sync } = await openApp({
    name: dbName,
    serverUrl,
    startOffline: localStorage.getItem(offlineKey) === '1',
    onConflictResolved: ({ title, winner }) => {
      resolvedConflicts++;
      log(`Conflict on "${title}": kept the later edit, from ${winner}.`);
      renderStatus();
    },
  });

  db.todos.find().$.subscribe(renderTodos);

  sync.status$.subscribe((next) => {
    if (status && next.connected !== status.connected) log(next.connected ? 'Connected to the sync server.' : 'Disconnected.');
    if (status && next.leader && !status.leader) log('This tab now syncs for the browser.');
    status = next;
    renderStatus();
  });
  setInterval(renderStatus, 1000);

  ui.offline.addEventListener('change', () => {
    if (ui.offline.checked) {
      localStorage.setItem(offlineKey, '1');
      sync.disable();
      log('Working offline: changes wait in the pending log.');
    } else {
      localStorage.removeItem(offlineKey);
      sync.enable();
      log('Back online: pushing pending changes.');
    }
  });
  ui.syncNow.addEventListener('click', async () => {
    try {
      const result = await sync.syncNow();
      log(`Synced ${result.syncedEvents} event(s).`);
    } catch (error) {
      log(`Sync failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  });
  ui.form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const title = ui.newTitle.value.trim();
    if (!title) return;
    ui.newTitle.value = '';
    await db.todos.insert({ id: newId(), title, done: false, createdAt: Date.now() });
  });

  document.body.dataset.ready = 'true';
}

start().catch((error: unknown) => {
  ui.error.hidden = false;
  ui.error.textContent = `Could not start: ${error instanceof Error ? error.message : String(error)}`;
  console.error(error);
});
