/** The todos of the list on show, one row each: tick, title, marks (not synced yet, a notice), photo, delete. */
import type { RxDocument } from 'rxdb';
import type { Todo } from './database.js';

export interface RowActions {
  toggle(doc: RxDocument<Todo>, done: boolean): void;
  rename(doc: RxDocument<Todo>, title: string): void;
  remove(doc: RxDocument<Todo>): void;
  dismissNotice(doc: RxDocument<Todo>): void;
  /** Extra content after the title (the photo), rendered again with each change of the todo. */
  decorate?(doc: RxDocument<Todo>, row: HTMLLIElement): void;
}

export interface RowState {
  unsynced: boolean;
  /** The notice addressed to this device, if it has not dismissed it. */
  notice: string | undefined;
}

interface Row {
  item: HTMLLIElement;
  toggle: HTMLInputElement;
  title: HTMLInputElement;
  unsynced: HTMLSpanElement;
  notice: HTMLParagraphElement;
  noticeText: HTMLSpanElement;
}

export class TodoList {
  private readonly rows = new Map<string, Row>();
  private readonly docs = new Map<string, RxDocument<Todo>>();

  constructor(
    private readonly list: HTMLUListElement,
    private readonly empty: HTMLElement,
    private readonly actions: RowActions,
  ) {}

  render(todos: RxDocument<Todo>[], stateOf: (doc: RxDocument<Todo>) => RowState): void {
    const sorted = [...todos].sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
    this.docs.clear();
    for (const doc of sorted) this.docs.set(doc.id, doc);
    for (const [id, row] of this.rows) {
      if (!this.docs.has(id)) {
        row.item.remove();
        this.rows.delete(id);
      }
    }
    for (const doc of sorted) {
      let row = this.rows.get(doc.id);
      if (!row) {
        row = this.createRow(doc.id);
        this.rows.set(doc.id, row);
      }
      const state = stateOf(doc);
      row.toggle.checked = doc.done;
      row.item.classList.toggle('done', doc.done);
      row.item.dataset.title = doc.title;
      // Do not overwrite what the user is typing.
      if (document.activeElement !== row.title) row.title.value = doc.title;
      row.unsynced.hidden = !state.unsynced;
      row.item.dataset.synced = String(!state.unsynced);
      row.notice.hidden = state.notice === undefined;
      row.noticeText.textContent = state.notice ?? '';
      this.actions.decorate?.(doc, row.item);
      this.list.append(row.item);
    }
    this.empty.hidden = sorted.length > 0;
  }

  private createRow(id: string): Row {
    const current = () => this.docs.get(id);
    const item = document.createElement('li');
    item.dataset.id = id;
    item.dataset.testid = 'todo';

    const toggle = document.createElement('input');
    toggle.type = 'checkbox';
    toggle.dataset.testid = 'toggle';
    toggle.setAttribute('aria-label', 'done');
    toggle.addEventListener('change', () => {
      const doc = current();
      if (doc) this.actions.toggle(doc, toggle.checked);
    });

    const title = document.createElement('input');
    title.className = 'title';
    title.dataset.testid = 'title';
    title.maxLength = 200;
    title.setAttribute('aria-label', 'title');
    title.addEventListener('change', () => {
      const value = title.value.trim();
      const doc = current();
      if (!doc) return;
      if (!value) title.value = doc.title;
      else if (value !== doc.title) this.actions.rename(doc, value);
    });
    title.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') title.blur();
      if (event.key === 'Escape') {
        title.value = current()?.title ?? title.value;
        title.blur();
      }
    });

    const unsynced = document.createElement('span');
    unsynced.className = 'unsynced';
    unsynced.dataset.testid = 'unsynced';
    unsynced.title = 'Saved on this device, not on the server yet';
    unsynced.textContent = 'not synced';

    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'delete';
    remove.dataset.testid = 'delete';
    remove.setAttribute('aria-label', 'delete');
    remove.textContent = '×';
    remove.addEventListener('click', () => {
      const doc = current();
      if (doc) this.actions.remove(doc);
    });

    const notice = document.createElement('p');
    notice.className = 'notice';
    notice.dataset.testid = 'notice';
    const noticeText = document.createElement('span');
    const dismiss = document.createElement('button');
    dismiss.type = 'button';
    dismiss.textContent = 'OK';
    dismiss.addEventListener('click', () => {
      const doc = current();
      if (doc) this.actions.dismissNotice(doc);
    });
    notice.append(noticeText, dismiss);

    const line = document.createElement('div');
    line.className = 'line';
    line.append(toggle, title, unsynced, remove);
    item.append(line, notice);
    return { item, toggle, title, unsynced, notice, noticeText };
  }
}
