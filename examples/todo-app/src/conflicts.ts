/**
 * Conflicts, settled per list: the plugin takes one resolver for the
 * `todos` collection, and this one looks at the todo's list and applies the
 * strategy chosen for it (merge, the later change, or ask the user: a
 * resolver that throws keeps the conflict for resolveConflict()).
 *
 * A settled conflict that dropped someone's change says so on the device
 * whose change it was: here at once, and on the other device through a
 * `notice` written into the todo, addressed to the device that made the
 * dropped change (each write carries its device in `editedBy`).
 */
import { lastWriteWins, merge, type Conflict, type ConflictResolver, type DocumentVersion, type Resolution } from 'rxdb-offline-sync';
import type { ListStrategy } from './lists.js';

type Data = Record<string, unknown>;

/** What a side of a conflict, or its outcome, leaves: the todo's fields, or gone. */
export interface Outcome {
  data: Data;
  deleted: boolean;
}

export interface SettledConflict {
  documentId: string;
  title: string;
  how: Exclude<ListStrategy, 'manual'> | 'yours' | 'theirs' | 'edited';
  /** This device's changes that did not survive, in plain words (empty: none lost). */
  lostHere: string[];
  /** Whether the other device's change lost anything. */
  lostThere: boolean;
}

/** One line for the activity panel. */
export function describeSettled(entry: SettledConflict): string {
  const bothKept = entry.lostHere.length === 0 && !entry.lostThere;
  const how = {
    merge: bothKept ? 'merged both changes' : 'merged them; where both changed the same thing, the later change stands',
    'last-write-wins': 'kept the later change',
    yours: 'you kept yours',
    theirs: 'you kept theirs',
    edited: 'you saved a merge',
  }[entry.how];
  const lost = entry.lostHere.length ? ` Your change was discarded: ${entry.lostHere.join(' and ')}.` : '';
  return `"${entry.title}" was changed on two devices: ${how}.${lost}`;
}

export interface Notice {
  id: string;
  /** The device whose change was dropped. */
  for: string;
  text: string;
}

/** Each of `side`'s changes since `base` that `result` does not keep, in plain words. */
export function lostChanges(base: DocumentVersion | null, side: DocumentVersion | Outcome | null, result: Outcome): string[] {
  if (!side) return [];
  const before = base && !base.deleted ? base.data : {};
  if (side.deleted) return result.deleted ? [] : ['deleting it'];
  if (result.deleted) return ['changes to it (the todo was deleted)'];
  const lost: string[] = [];
  if (side.data.title !== before.title && side.data.title !== result.data.title) lost.push(`renaming it to "${String(side.data.title)}"`);
  if (side.data.done !== before.done && side.data.done !== result.data.done) lost.push(side.data.done ? 'ticking it done' : 'un-ticking it');
  return lost;
}

function outcomeOf(resolution: Exclude<Resolution, { action: 'manual' }>, conflict: Conflict): Outcome {
  const { local, remote } = conflict;
  switch (resolution.action) {
    case 'keep-local':
      return { data: local.data, deleted: local.deleted };
    case 'keep-remote':
      return remote ? { data: remote.data, deleted: remote.deleted } : { data: local.data, deleted: true };
    case 'write':
      return { data: resolution.data, deleted: false };
    case 'delete':
      return { data: local.data, deleted: true };
  }
}

export function titleOf(conflict: Pick<Conflict, 'local' | 'remote' | 'documentId'>): string {
  return String(conflict.local.data.title ?? conflict.remote?.data.title ?? conflict.documentId);
}

/**
 * The todo to write once a conflict is settled with `result`: with a
 * notice for the other device when its change was dropped (null: delete).
 */
export function withNotice(conflict: Conflict, result: Outcome, deviceLabel: string): Data | null {
  if (result.deleted) return null;
  const { notice: _old, ...data } = result.data;
  const lostThere = lostChanges(conflict.base, conflict.remote, result);
  const to = conflict.remote?.data.editedBy;
  if (lostThere.length === 0 || typeof to !== 'string') return data;
  const notice: Notice = {
    id: crypto.randomUUID(),
    for: to,
    text: `Your change to "${titleOf(conflict)}" was replaced by one made on ${deviceLabel}: lost ${lostThere.join(' and ')}.`,
  };
  return { ...data, notice };
}

export function createResolver(options: {
  strategyOf: (list: string) => ListStrategy;
  deviceLabel: string;
  onSettled: (settled: SettledConflict) => void;
}): ConflictResolver {
  return (conflict) => {
    const list = String((conflict.remote ?? conflict.local).data.list ?? '');
    const strategy = options.strategyOf(list);
    // A list set to "Ask me": the plugin keeps the conflict for resolveConflict().
    if (strategy === 'manual') return 'manual';
    const resolution = strategy === 'merge' ? merge(conflict) : lastWriteWins(conflict);
    if (resolution.action === 'manual') return 'manual';
    const result = outcomeOf(resolution, conflict);
    options.onSettled({
      documentId: conflict.documentId,
      title: titleOf(conflict),
      how: strategy,
      lostHere: lostChanges(conflict.base, conflict.local, result),
      lostThere: lostChanges(conflict.base, conflict.remote, result).length > 0,
    });
    return withNotice(conflict, result, options.deviceLabel);
  };
}
