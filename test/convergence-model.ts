/**
 * What the randomized convergence test records and checks: every version of
 * each document that each device held (from its collection's change stream),
 * what the app decided in conflicts, and the server's event log. From these,
 * each strategy's rule for when a write may replace a server version its
 * author never saw.
 */
import type { RxCollection } from 'rxdb';
import type { Subscription } from 'rxjs';
import type { Conflict } from '../src/client/strategies/index.js';
import type { StoredEvent } from '../src/shared/protocol/index.js';
import { compareHlc } from '../src/shared/hlc.js';
import type { Todo } from './helpers.js';

/** One version of a document, by content: titles are unique per write, so the title names the write. */
export type VersionKey = string;

export function keyOf(data: { title?: unknown; done?: unknown }, deleted: boolean): VersionKey {
  return `${deleted ? '-' : ''}${String(data.title)}|${String(data.done)}`;
}

export const eventKey = (event: StoredEvent): VersionKey => keyOf(event.data, event.op === 'delete');

export type HistoryEntry =
  /** The device's collection came to hold this version (the app's write or the plugin's). */
  | { kind: 'held'; doc: string; key: VersionKey }
  /** The app wrote this version itself. */
  | { kind: 'own'; doc: string; key: VersionKey }
  /** The app was shown a conflict against `remote` and decided it (manual strategy). */
  | { kind: 'decided'; doc: string; remote: VersionKey | null }
  /** The app's resolver function was given `remote` and answered `output` (custom strategy). */
  | { kind: 'resolved'; doc: string; remote: VersionKey | null; output: VersionKey };

/** Per device, in the order things happened on it. */
export class Histories {
  readonly byDevice: HistoryEntry[][];

  constructor(devices: number) {
    this.byDevice = Array.from({ length: devices }, () => []);
  }

  add(device: number, entry: HistoryEntry): void {
    this.byDevice[device]!.push(entry);
  }

  /** Records every version the collection comes to hold; subscribe before the plugin starts. */
  watch(device: number, todos: RxCollection<Todo>): Subscription {
    return todos.$.subscribe((change) => {
      const deleted = change.operation === 'DELETE' || (change.documentData as { _deleted?: boolean })._deleted === true;
      this.add(device, { kind: 'held', doc: change.documentId, key: keyOf(change.documentData, deleted) });
    });
  }

  /**
   * Records what the collection holds now, where it differs from the last
   * version seen: a database's change stream ends as it starts closing, so
   * the plugin's last writes before its close are not in it.
   */
  async snapshot(device: number, todos: RxCollection<Todo>, ids: readonly string[]): Promise<void> {
    const stored = await todos.internalStorageInstance.findDocumentsById([...ids], true);
    for (const data of stored) {
      const key = keyOf(data, data._deleted);
      const last = this.byDevice[device]!.findLast((entry): entry is HistoryEntry & { kind: 'held' } => entry.kind === 'held' && entry.doc === data.id);
      if (last?.key !== key) this.add(device, { kind: 'held', doc: data.id, key });
    }
  }

  /** One device's history of one document, for a failure message. */
  describe(device: number, doc: string): string {
    return describe(this.byDevice[device]!.filter((entry) => entry.doc === doc));
  }

  /** The versions the app itself wrote, per document, in order. */
  ownWrites(device: number, doc: string): VersionKey[] {
    return this.byDevice[device]!.flatMap((entry) => (entry.kind === 'own' && entry.doc === doc ? [entry.key] : []));
  }
}

/** Whether a write by a device that had not seen the server version it replaced is allowed. */
export type OverwriteRule = (context: {
  previous: StoredEvent;
  next: StoredEvent;
  history: HistoryEntry[];
}) => boolean;

/** Events of the server's log per document, in sequence order. */
export function eventsByDocument(events: readonly StoredEvent[]): Map<string, StoredEvent[]> {
  const byDoc = new Map<string, StoredEvent[]>();
  for (const event of [...events].sort((a, b) => a.seq - b.seq)) {
    const list = byDoc.get(event.documentId) ?? [];
    list.push(event);
    byDoc.set(event.documentId, list);
  }
  return byDoc;
}

/**
 * Checks every step of the server's log, e(k-1) -> e(k) of one document,
 * against what the author of e(k) knew when its device first held e(k):
 * - it held e(k-1) before then (an ordinary write on top of it), or
 * - it saw e(k-1) through its resolver (see sawThroughResolution), or
 * - e(k-1) is a deletion and the document was absent or deleted on that
 *   device then (a deletion holds no content to lose), or
 * - the strategy's rule allows the overwrite.
 * Also: the author held e(k) at some point (a device pushes only what it
 * has), and when `ownOnly`, e(k) is a version its app wrote itself.
 * Returns the violations, each described, and how many steps only the
 * strategy's rule allowed (a run with none exercised no conflict).
 */
export function checkLog(
  events: readonly StoredEvent[],
  histories: Histories,
  deviceOf: (clientId: string) => number | undefined,
  rule: OverwriteRule,
  ownOnly: boolean,
): { problems: string[]; overrides: number } {
  const problems: string[] = [];
  let overrides = 0;
  for (const [doc, list] of eventsByDocument(events)) {
    list.forEach((next, k) => {
      const device = deviceOf(next.clientId);
      const at = `${doc} seq ${next.seq} (${eventKey(next)}, device ${device})`;
      if (device === undefined) {
        problems.push(`${at}: pushed by an unknown client`);
        return;
      }
      const history = histories.byDevice[device]!;
      const key = eventKey(next);
      const first = history.findIndex((entry) => entry.kind === 'held' && entry.doc === doc && entry.key === key);
      if (first < 0) {
        problems.push(`${at}: its author never held that version`);
        return;
      }
      if (ownOnly && !histories.ownWrites(device, doc).includes(key)) problems.push(`${at}: not a version its author's app wrote`);
      if (k === 0) return;
      const previous = list[k - 1]!;
      const before = history.slice(0, first).filter((entry) => entry.doc === doc);
      const previousKey = eventKey(previous);
      if (before.some((entry) => entry.kind === 'held' && entry.key === previousKey)) return;
      const own = new Set(histories.ownWrites(device, doc));
      if (own.has(key) && sawThroughResolution(before, previousKey, own)) return;
      const lastHeld = before.findLast((entry) => entry.kind === 'held');
      if (previous.op === 'delete' && (!lastHeld || lastHeld.key.startsWith('-'))) return;
      if (rule({ previous, next, history: history.filter((entry) => entry.doc === doc) })) {
        overrides++;
        return;
      }
      problems.push(
        `${at} replaced seq ${previous.seq} (${previousKey}), which its author never saw and the strategy does not let it override; ` +
          `server log of ${doc}: ${list.map((event) => `${event.seq}:${eventKey(event)}@${deviceOf(event.clientId)}`).join(' ')}; ` +
          `device ${device} on ${doc}: ${describe(history.filter((entry) => entry.doc === doc))}`,
      );
    });
  }
  return { problems, overrides };
}

/**
 * Whether a device saw server version `previousKey` through its resolver,
 * so that a write its app makes afterwards counts as made on top of that
 * version. `before` is the device's history of the document up to (not
 * including) the moment it first held the write; `own` the versions its app
 * wrote on the document (the caller checks that the write is one of them).
 * True when some `resolved` entry in `before` says the resolver was given
 * `previousKey` as the server's version and answered R, and from that entry
 * on the device held R first (R was already the last version it held before
 * the entry, or R is the first version it came to hold after it: an answer
 * the plugin could not write, because the app wrote first, does not count),
 * and after R only versions its own app wrote (or R again): nothing from
 * elsewhere came between the answer and the write.
 *
 * Why: the engine pushes such a write in place of the answer, based on
 * `previousKey`, when the answer had not been sent yet (an unsent log entry
 * is rewritten with the document's newer state: local-changes.ts,
 * nextChange), so the server's log reads previous -> write and never stores
 * R. Had R been pushed first, it would read previous -> R (what the resolver
 * answered for previous: OVERWRITE_RULES.custom) -> write (an ordinary write
 * on R). Either way the write's author had previous's content before it,
 * through the resolver.
 */
function sawThroughResolution(before: readonly HistoryEntry[], previousKey: VersionKey, own: ReadonlySet<VersionKey>): boolean {
  return before.some((entry, r) => {
    if (entry.kind !== 'resolved' || entry.remote !== previousKey) return false;
    const answer = entry.output;
    const heldAfter = before.slice(r + 1).flatMap((e) => (e.kind === 'held' ? [e.key] : []));
    const heldAtEntry = before.slice(0, r).findLast((e) => e.kind === 'held')?.key === answer;
    // What the device held after it first held the answer (undefined: it never did so first).
    const afterAnswer = heldAtEntry ? heldAfter : heldAfter[0] === answer ? heldAfter.slice(1) : undefined;
    return afterAnswer !== undefined && afterAnswer.every((key) => key === answer || own.has(key));
  });
}

function describe(entries: readonly HistoryEntry[]): string {
  return entries
    .map((entry) => (entry.kind === 'held' ? entry.key : entry.kind === 'own' ? `own:${entry.key}` : entry.kind === 'decided' ? `decided(vs ${entry.remote})` : `resolved(${entry.remote} -> ${entry.output})`))
    .join(' ');
}

/** The overwrite rule of each built-in strategy and of the test's own resolver. */
export const OVERWRITE_RULES = {
  /** A later clock wins. */
  'last-write-wins': ({ previous, next }) => compareHlc(next.hlc, previous.hlc) > 0,
  /** Field by field: a result is stamped with the later clock of its two sides; at a tie the title (changed by every write) is the server's. */
  merge: ({ previous, next }) => {
    const order = compareHlc(next.hlc, previous.hlc);
    return order > 0 || (order === 0 && next.data.title === previous.data.title);
  },
  /** The server's version stands: never. */
  'server-wins': () => false,
  /** The local change stands, whatever the server had (checkLog asks that it is the author's own). */
  'client-wins': () => true,
  /** Only through the app's decision on a conflict that showed it that server version. */
  manual: ({ previous, history }) => history.some((entry) => entry.kind === 'decided' && entry.remote === eventKey(previous)),
  /** Only as the app's resolver answered, given that server version. */
  custom: ({ previous, next, history }) =>
    history.some((entry) => entry.kind === 'resolved' && entry.remote === eventKey(previous) && entry.output === eventKey(next)),
} satisfies Record<string, OverwriteRule>;

/** The write number a title starts with (w12-c0 -> 12). */
const writeNumber = (data: Record<string, unknown>) => Number(/^w(\d+)/.exec(String(data.title))?.[1] ?? -1);

/**
 * The test's own resolver, deterministic (the same answer on every device):
 * a live side beats a deleted one; of two live ones, the later write by the
 * test's count wins, and `done` is true if either side's is.
 */
export function laterNumberWins({ local, remote }: Pick<Conflict, 'local' | 'remote'>): Todo | null {
  if (!remote) return local.deleted ? null : (local.data as unknown as Todo);
  if (local.deleted && remote.deleted) return null;
  if (local.deleted) return remote.data as unknown as Todo;
  if (remote.deleted) return local.data as unknown as Todo;
  const winner = writeNumber(local.data) >= writeNumber(remote.data) ? local : remote;
  return { ...(winner.data as unknown as Todo), done: local.data.done === true || remote.data.done === true };
}

/** A small seeded generator for the app's choices in manual conflicts. */
export function choices(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** The server's current heads as documents (deleted ones left out). */
export function headsOf(events: readonly StoredEvent[]): Todo[] {
  return [...eventsByDocument(events).values()]
    .map((list) => list[list.length - 1]!)
    .filter((head) => head.op !== 'delete')
    .map((head) => head.data as unknown as Todo)
    .sort((a, b) => a.id.localeCompare(b.id));
}
