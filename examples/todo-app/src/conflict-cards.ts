/**
 * Conflicts kept for the user (lists set to "Ask me"): both versions side
 * by side, with keep mine, keep theirs, or an edited merge of the two.
 */
import { merge, type ConflictResolutionChoice, type DocumentVersion, type StoredConflict } from 'rxdb-offline-sync';
import { lostChanges, titleOf, withNotice, type Outcome } from './conflicts.js';

export interface ConflictChoice {
  conflict: StoredConflict;
  choice: ConflictResolutionChoice;
  how: 'yours' | 'theirs' | 'edited';
  /** This device's changes the choice drops, in plain words. */
  lostHere: string[];
  /** Whether the choice drops something of the other device's change. */
  lostThere: boolean;
}

function describe(version: DocumentVersion | null): string {
  if (!version || version.deleted) return 'deleted';
  return `${String(version.data.title)}${version.data.done ? ' (done)' : ''}`;
}

/** The merge the strategy would make, as the starting point of an edit. */
function suggested(conflict: StoredConflict): Outcome {
  const resolution = merge(conflict);
  if (resolution.action === 'write') return { data: resolution.data, deleted: false };
  const side = resolution.action === 'keep-remote' && conflict.remote ? conflict.remote : conflict.local;
  return side.deleted ? { data: conflict.local.data, deleted: false } : { data: side.data, deleted: false };
}

export function renderConflicts(
  container: HTMLElement,
  conflicts: StoredConflict[],
  deviceLabel: string,
  resolve: (choice: ConflictChoice) => void,
): void {
  container.replaceChildren();
  container.hidden = conflicts.length === 0;
  if (conflicts.length === 0) return;
  const heading = document.createElement('h2');
  heading.textContent = conflicts.length === 1 ? 'A todo needs your decision' : `${conflicts.length} todos need your decision`;
  container.append(heading);
  for (const conflict of conflicts) {
    const card = document.createElement('article');
    card.className = 'conflict';
    card.dataset.testid = 'conflict';
    card.dataset.documentId = conflict.documentId;
    const title = document.createElement('h3');
    title.textContent = `"${titleOf(conflict)}" was changed on two devices`;
    const sides = document.createElement('div');
    sides.className = 'sides';
    for (const [label, version, testid] of [
      ['On this device', conflict.local, 'mine'],
      ['From the other device', conflict.remote, 'theirs'],
    ] as const) {
      const side = document.createElement('div');
      side.dataset.testid = `version-${testid}`;
      const name = document.createElement('span');
      name.className = 'side-label';
      name.textContent = label;
      const value = document.createElement('strong');
      value.textContent = describe(version);
      side.append(name, value);
      sides.append(side);
    }

    const mine: Outcome = { data: conflict.local.data, deleted: conflict.local.deleted };
    const theirs: Outcome = conflict.remote ? { data: conflict.remote.data, deleted: conflict.remote.deleted } : { data: conflict.local.data, deleted: true };
    const button = (label: string, testid: string, onClick: () => void) => {
      const element = document.createElement('button');
      element.type = 'button';
      element.textContent = label;
      element.dataset.testid = testid;
      element.addEventListener('click', onClick);
      return element;
    };
    const keepMine = button('Keep mine', 'keep-mine', () => {
      const data = withNotice(conflict, mine, deviceLabel);
      resolve({ conflict, choice: data ? { data } : 'keep-local', how: 'yours', lostHere: [], lostThere: lostChanges(conflict.base, conflict.remote, mine).length > 0 });
    });
    const keepTheirs = button('Keep theirs', 'keep-theirs', () =>
      resolve({ conflict, choice: 'keep-remote', how: 'theirs', lostHere: lostChanges(conflict.base, conflict.local, theirs), lostThere: false }),
    );

    const editor = document.createElement('form');
    editor.className = 'merge-editor';
    editor.hidden = true;
    const start = suggested(conflict);
    const titleInput = document.createElement('input');
    titleInput.value = String(start.data.title ?? '');
    titleInput.maxLength = 200;
    titleInput.required = true;
    titleInput.dataset.testid = 'merged-title';
    titleInput.setAttribute('aria-label', 'merged title');
    const doneLabel = document.createElement('label');
    const doneInput = document.createElement('input');
    doneInput.type = 'checkbox';
    doneInput.checked = start.data.done === true;
    doneLabel.append(doneInput, ' done');
    const save = document.createElement('button');
    save.type = 'submit';
    save.textContent = 'Save merged';
    save.dataset.testid = 'save-merged';
    editor.append(titleInput, doneLabel, save);
    editor.addEventListener('submit', (event) => {
      event.preventDefault();
      const base = conflict.local.deleted && conflict.remote ? conflict.remote.data : conflict.local.data;
      const merged: Outcome = { data: { ...base, title: titleInput.value.trim(), done: doneInput.checked }, deleted: false };
      const data = withNotice(conflict, merged, deviceLabel)!;
      resolve({ conflict, choice: { data }, how: 'edited', lostHere: lostChanges(conflict.base, conflict.local, merged), lostThere: lostChanges(conflict.base, conflict.remote, merged).length > 0 });
    });
    const edit = button('Edit a merge…', 'edit-merged', () => {
      editor.hidden = false;
      titleInput.focus();
    });

    const actions = document.createElement('div');
    actions.className = 'actions';
    actions.append(keepMine, keepTheirs, edit);
    card.append(title, sides, actions, editor);
    container.append(card);
  }
}
