/** The todo app: sign-in, the lists, and the sync panel, in plain DOM, rendering the database and the sync status as they change. */
import type { RxDocument } from 'rxdb';
import type { SyncApi, SyncError, SyncStatus } from 'rxdb-offline-sync';
import { createActivityLog } from './activity.js';
import { renderConflicts, type ConflictChoice } from './conflict-cards.js';
import { createResolver, describeSettled, type SettledConflict } from './conflicts.js';
import { openApp, type Todo, type TodoDatabase } from './database.js';
import { listsOf, setStrategy, STRATEGIES, strategyOf, type ListStrategy } from './lists.js';
import { labelOf, signIn, signedInUser, signOut, tokenSource, USERS, type UserName } from './session.js';
import { TodoList } from './todo-list.js';
import { registerUpdates } from './updates.js';
import { Photos } from './photos.js';
import { count, plainWords } from './words.js';
import './style.css';

const params = new URLSearchParams(location.search);
/** `?device=2` opens a second database in this browser: a second "device" with its own IndexedDB. */
const device = params.get('device')?.replace(/[^a-z0-9]/gi, '').toLowerCase() || undefined;
const serverUrl = params.get('server') ?? location.origin;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  signin: $('signin'),
  users: $('users'),
  app: $('app'),
  who: $('who'),
  userName: $('user-name'),
  signOut: $<HTMLButtonElement>('sign-out'),
  lists: $('lists'),
  strategy: $<HTMLSelectElement>('strategy'),
  connection: $('connection'),
  offline: $<HTMLInputElement>('offline'),
  syncNow: $<HTMLButtonElement>('sync-now'),
  pending: $('pending'),
  lastSync: $('last-sync'),
  resolved: $('resolved'),
  openConflicts: $('open-conflicts'),
  error: $('error'),
  transfers: $('transfers'),
  errorWords: $('error-words'),
  errorDetail: $('error-detail'),
  device: $('device'),
  form: $<HTMLFormElement>('add-form'),
  newTitle: $<HTMLInputElement>('new-title'),
  conflicts: $('conflicts'),
  list: $<HTMLUListElement>('todos'),
  empty: $('empty'),
  log: $<HTMLOListElement>('log'),
};

const log = createActivityLog(ui.log);

function ago(time: number | null): string {
  if (time === null) return 'never';
  const seconds = Math.max(0, Math.round((Date.now() - time) / 1000));
  if (seconds < 2) return 'just now';
  if (seconds < 90) return `${seconds} s ago`;
  return new Date(time).toLocaleTimeString();
}

const quoted = (titles: string[]) => (titles.length <= 3 ? titles.map((title) => `"${title}"`).join(', ') : `${titles.slice(0, 3).map((title) => `"${title}"`).join(', ')} and ${titles.length - 3} more`);

// ---- sign-in -------------------------------------------------------------------------

function showSignIn(): void {
  ui.signin.hidden = false;
  for (const user of USERS) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = user.label;
    button.dataset.testid = `sign-in-${user.name}`;
    button.addEventListener('click', () => {
      signIn(user.name);
      ui.signin.hidden = true;
      void start(user.name).catch(failed);
    });
    ui.users.append(button);
  }
  document.body.dataset.ready = 'signin';
}

// ---- the app -------------------------------------------------------------------------

/** A small per-database value in localStorage (tabs of one database share it). */
function stored(dbName: string, name: string) {
  const key = `rxdb-offline-sync-demo:${name}:${dbName}`;
  return { key, get: () => localStorage.getItem(key), set: (value: string) => localStorage.setItem(key, value), remove: () => localStorage.removeItem(key) };
}

async function start(user: UserName): Promise<void> {
  const dbName = `todos-${user}${device ? `-device-${device}` : ''}`;
  const offline = stored(dbName, 'offline');
  const resolvedCount = stored(dbName, 'resolved');
  const seenNotices = stored(dbName, 'seen-notices');
  const currentList = stored(dbName, 'list');
  const deviceStore = stored(dbName, 'device');
  if (!deviceStore.get()) deviceStore.set(crypto.randomUUID());
  const deviceId = deviceStore.get()!;
  const deviceLabel = `${labelOf(user)}'s device ${deviceId.slice(0, 4)}`;
  const lists = listsOf(user);
  let list = lists.some((entry) => entry.id === currentList.get()) ? currentList.get()! : lists[0]!.id;
  /** The todos holding a change the server has not acknowledged: the plugin's list, the leading tab's in every tab. */
  let unsynced: ReadonlySet<string> = new Set();
  const tokens = tokenSource(serverUrl, user);

  ui.app.hidden = false;
  ui.who.hidden = false;
  ui.userName.textContent = labelOf(user);
  ui.device.textContent = `${deviceLabel} · database "${dbName}" · server ${serverUrl}`;

  const seen = (): string[] => JSON.parse(seenNotices.get() ?? '[]') as string[];
  const settled = (entry: SettledConflict) => {
    resolvedCount.set(String(Number(resolvedCount.get() ?? 0) + 1));
    log({ kind: 'conflict', text: describeSettled(entry) });
    renderStatus();
  };

  const { db, sync } = await openApp({
    name: dbName,
    serverUrl,
    authToken: () => tokens.authToken(),
    startOffline: offline.get() === '1',
    resolveConflict: createResolver({ strategyOf: (listId) => strategyOf(dbName, listId), deviceLabel, onSettled: settled }),
  });

  let todos: RxDocument<Todo>[] = [];
  const titles = new Map<string, string>();

  // ---- writes: each names this device (the plugin lists the todo as unsynced until the server has it) ----------
  const photos = new Photos({
    transfers$: sync.transfers$,
    panel: ui.transfers,
    titleOf: (id) => titles.get(id) ?? 'a todo',
    log: (text) => log({ kind: 'sent', text }),
  });
  photos.docs = (id) => todos.find((doc) => doc.id === id);
  const todoList = new TodoList(ui.list, ui.empty, {
    decorate: (doc, row) => photos.decorate(doc, row),
    toggle: (doc, done) => void doc.incrementalPatch({ done, editedBy: deviceId }),
    rename: (doc, title) => void doc.incrementalPatch({ title, editedBy: deviceId }),
    remove: (doc) => void doc.incrementalRemove(),
    dismissNotice: (doc) => {
      if (doc.notice) seenNotices.set(JSON.stringify([...seen(), doc.notice.id].slice(-200)));
      render();
    },
  });

  // ---- rendering -------------------------------------------------------------------

  let status: SyncStatus | undefined;
  const noticeFor = (doc: RxDocument<Todo>) => (doc.notice && doc.notice.for === deviceId && !seen().includes(doc.notice.id) ? doc.notice.text : undefined);

  function renderLists(): void {
    ui.lists.replaceChildren(
      ...lists.map((entry) => {
        const tab = document.createElement('button');
        tab.type = 'button';
        tab.className = 'tab';
        tab.dataset.testid = `list-${entry.id === user ? 'mine' : entry.id}`;
        tab.setAttribute('aria-pressed', String(entry.id === list));
        const waiting = todos.filter((doc) => doc.list === entry.id && unsynced.has(doc.id)).length;
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.dataset.testid = 'list-pending';
        badge.hidden = waiting === 0;
        badge.textContent = String(waiting);
        badge.title = `${count(waiting, 'change')} not synced yet`;
        tab.append(entry.label, badge);
        tab.addEventListener('click', () => {
          list = entry.id;
          currentList.set(list);
          render();
        });
        return tab;
      }),
    );
    ui.strategy.value = strategyOf(dbName, list);
  }

  function render(): void {
    renderLists();
    todoList.render(
      todos.filter((doc) => doc.list === list),
      (doc) => ({ unsynced: unsynced.has(doc.id), notice: noticeFor(doc) }),
    );
  }

  function renderStatus(): void {
    ui.resolved.textContent = resolvedCount.get() ?? '0';
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
    ui.openConflicts.textContent = String(status.conflicts);
    showError(status.enabled && status.error ? status.error : null);
  }

  function showError(error: SyncError | null): void {
    ui.error.hidden = !error;
    ui.errorWords.textContent = error ? plainWords(error) : '';
    ui.errorDetail.textContent = error ? `${error.code}: ${error.message}` : '';
  }

  for (const { value, label } of STRATEGIES) ui.strategy.append(new Option(label, value));
  ui.strategy.addEventListener('change', () => {
    setStrategy(dbName, list, ui.strategy.value as ListStrategy);
    log({ kind: 'info', text: `Conflicts on "${lists.find((entry) => entry.id === list)!.label}" now: ${STRATEGIES.find((entry) => entry.value === ui.strategy.value)!.label.split(':')[0]}.` });
  });
  window.addEventListener('storage', (event) => {
    if (event.key === resolvedCount.key) renderStatus();
  });
  sync.pendingDocuments$.subscribe((pending) => {
    unsynced = new Set(pending.todos ?? []);
    render();
  });

  const shownNotices = new Set<string>();
  db.todos.find().$.subscribe((next) => {
    for (const doc of next) {
      titles.set(doc.id, doc.title);
      const notice = noticeFor(doc);
      if (notice && doc.notice && !shownNotices.has(doc.notice.id)) {
        shownNotices.add(doc.notice.id);
        log({ kind: 'conflict', text: notice });
      }
    }
    todos = next;
    render();
  });

  // ---- the sync panel ----------------------------------------------------------------

  let lastError: string | undefined;
  sync.status$.subscribe((next) => {
    if (status && next.connected !== status.connected && next.enabled) {
      log(next.connected ? { kind: 'link', text: 'Connected to the server.' } : { kind: 'link', text: "Lost the connection to the server — changes are kept and will sync when it's back." });
    }
    if (status && next.leader && !status.leader) log({ kind: 'info', text: 'This tab now syncs for the browser.' });
    // A conflict left to the user (its list asks), in every tab: the count is the leading tab's.
    if (status && next.conflicts > status.conflicts) log({ kind: 'conflict', text: 'A todo was changed on two devices: choose which version to keep (above the list).' });
    const errorKey = next.error && next.enabled ? `${next.error.code}: ${next.error.message}` : undefined;
    if (errorKey && errorKey !== lastError) {
      log({ kind: 'error', text: plainWords(next.error!), detail: errorKey });
      // A server restarted with another signing key refuses the token held: the next attempt fetches one.
      if (next.error!.code === 'UNAUTHENTICATED' || next.error!.code === 'TOKEN_EXPIRED') tokens.forget();
    }
    lastError = errorKey;
    status = next;
    renderStatus();
  });
  setInterval(renderStatus, 1000);

  const titlesOf = async (ids: string[]) => {
    const found = await db.todos.findByIds(ids).exec();
    return ids.map((id) => found.get(id)?.title ?? titles.get(id) ?? 'a deleted todo');
  };
  sync.sent$.subscribe((changes) => {
    const ids = [...new Set(changes.filter((change) => change.collection === 'todos').map((change) => change.documentId))];
    void titlesOf(ids).then((names) => log({ kind: 'sent', text: `Saved on the server: ${quoted(names)}.` }));
  });
  sync.received$.subscribe((changes) => {
    const ids = [...new Set(changes.filter((change) => change.collection === 'todos').map((change) => change.documentId))];
    if (ids.length === 0) return;
    void titlesOf(ids).then((names) => log({ kind: 'received', text: `From another device: ${quoted(names)}.` }));
  });

  const showConflicts = (conflicts: Parameters<typeof renderConflicts>[1]) => renderConflicts(ui.conflicts, conflicts, deviceLabel, (choice) => void settleByHand(sync, choice));
  sync.conflicts$.subscribe(showConflicts);
  showConflicts(sync.getConflicts());
  async function settleByHand(api: SyncApi, { conflict, choice, how, lostHere, lostThere }: ConflictChoice): Promise<void> {
    try {
      await api.resolveConflict(conflict.id, choice);
      settled({ documentId: conflict.documentId, title: String(conflict.local.data.title ?? conflict.remote?.data.title ?? ''), how, lostHere, lostThere });
    } catch (error) {
      log({ kind: 'error', text: 'That todo changed again meanwhile — look at it once more and choose again.', detail: error instanceof Error ? error.message : String(error) });
    }
  }

  // ---- controls ------------------------------------------------------------------------

  ui.offline.addEventListener('change', () => {
    if (ui.offline.checked) {
      offline.set('1');
      sync.disable();
      log({ kind: 'link', text: 'Working offline: changes are kept on this device until you go back online.' });
    } else {
      offline.remove();
      sync.enable();
      log({ kind: 'link', text: 'Back online: sending what was kept.' });
    }
  });
  ui.syncNow.addEventListener('click', async () => {
    try {
      const result = await sync.syncNow();
      log({ kind: 'info', text: `Synced with the server: ${count(result.syncedEvents, 'change')} moved.` });
    } catch (error) {
      const syncError = error as SyncError;
      log({ kind: 'error', text: plainWords(syncError), detail: `${syncError.code ?? 'ERROR'}: ${syncError.message}` });
    }
  });
  ui.signOut.addEventListener('click', () => {
    signOut();
    location.reload();
  });
  ui.form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const title = ui.newTitle.value.trim();
    if (!title) return;
    ui.newTitle.value = '';
    const id = crypto.randomUUID();
    await db.todos.insert({ id, title, done: false, createdAt: Date.now(), list, owner: user, editedBy: deviceId });
  });

  exposeForTests(db, sync);
  document.body.dataset.ready = 'true';
}

/** The end-to-end tests read the database and the sync API through these. */
function exposeForTests(db: TodoDatabase, sync: SyncApi): void {
  Object.assign(window, { todoApp: { db, sync } });
}

function failed(error: unknown): void {
  ui.app.hidden = false;
  ui.error.hidden = false;
  ui.errorWords.textContent = `The app could not start: ${error instanceof Error ? error.message : String(error)}`;
  console.error(error);
}

registerUpdates({
  banner: $('update'),
  reload: $<HTMLButtonElement>('update-reload'),
  onOfflineReady: () => {
    log({ kind: 'info', text: 'Ready to work offline: this app now opens even with no network.' });
  },
});

if (typeof crypto.randomUUID !== 'function') {
  failed(new Error('open this page through localhost or HTTPS: browsers give crypto.randomUUID only to secure pages'));
} else {
  const user = signedInUser(params);
  if (user) void start(user).catch(failed);
  else showSignIn();
}
