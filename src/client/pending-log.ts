import { DocumentMap } from '../shared/document-map.js';
import { jsonLengthBound } from '../shared/json.js';
import type { PendingEntry } from './documents.js';
import type { MetaWrite } from './meta-store.js';

export const pendingId = (key: string) => `pending|${key}`;

/**
 * Entries logged together are stored together, up to this many to a page (a
 * push's default batch): a bulk write of N documents costs N / PAGE_SIZE
 * storage writes when it is logged and again when it is acknowledged, not N
 * each. (A change to one unsent entry moves it to a page of its own: see
 * update().)
 */
export const PAGE_SIZE = 500;
/**
 * And up to about this much JSON (jsonLengthBound, so often less): a page of
 * large documents is not rewritten whole for every smaller push batch that
 * takes a part of it.
 */
export const PAGE_BYTES = 1024 * 1024;

/** Per collection, the ids of the documents that hold a change the server has not acknowledged, sorted. */
export type PendingDocuments = Readonly<Record<string, readonly string[]>>;

/** How the log is stored: one document per page, named by its key (its first entry's key; for an entry moved to a page of its own, that entry's key and "+"). */
export interface StoredPage {
  key: string;
  entries: { key: string; event: PendingEntry['event'] }[];
}

/** A write of nothing: an id no stored document has, deleted (MetaStore skips it). */
const NO_WRITE: MetaWrite = { id: 'pending|', kind: 'pending' };

interface Page {
  id: string;
  key: string;
  /** Every entry ever put in this page, in order; those whose `page` is another one (or none) left it. */
  entries: LogEntry[];
  /** How many of `entries` the page still holds. */
  count: number;
  /** The JSON bounds of the entries put in it. */
  bytes: number;
  /** Takes new entries until it is first written: a page is only ever filled by one storage write. */
  open: boolean;
  /** The write of this page (see pageWrite()); one object however often the page changes. */
  write?: MetaWrite;
}

/**
 * An entry as the log holds it. Its bookkeeping lives on the entry, not in
 * maps beside it: a push of thousands of events adds and removes each of
 * them once, and every map insertion and deletion counts at that scale.
 */
interface LogEntry extends PendingEntry {
  /** The log holding it; an entry of a log read again since is not this log's. */
  readonly log: PendingLog;
  /** The page storing it; undefined once it left the log. */
  page: Page | undefined;
  /** jsonLengthBound() of its event, found while the event is new (and in the cache). */
  bound: number;
}

/**
 * The pending-event log in memory, mirrored in the meta store. Entries are
 * ordered by key (a hybrid logical clock, so later writes sort later); per
 * document, sent entries come first and at most one unsent entry follows.
 * Mutations return the meta writes that make them durable, so a caller can
 * persist them together with related state in one storage call; a write
 * stores the whole page as it is when the write is made (several mutations
 * of one page in one call are one write).
 */
export class PendingLog {
  /** Entries in key order, also some that left the log (`page` undefined), dropped now and then (see compact()). */
  private order: LogEntry[] = [];
  /** Entries before this index in `order` have all left the log. */
  private first = 0;
  /** Entries from `first` on that left the log. */
  private gone = 0;
  private count = 0;
  private readonly byDocument = new DocumentMap<LogEntry[]>();
  /** See documentsVersion. */
  private membership = 0;
  /** Pages read back holding a stale copy of an entry moved out of them (see repairs()). */
  private readonly stale = new Set<Page>();
  private openPage: Page | undefined;
  private lastMillis = 0;
  private counter = 0;

  /**
   * Every entry with a key up to this one counts as sent. Marking a batch
   * sent is one write of this watermark (in the state document), not a
   * rewrite of each entry.
   */
  private sentKey = '';

  constructor(stored: Iterable<StoredPage> = [], sentThrough = '') {
    this.sentKey = sentThrough;
    const loaded: [PendingEntry, Page][] = [];
    for (const { key: pageKey, entries } of stored) {
      const page: Page = { id: pendingId(pageKey), key: pageKey, entries: [], count: 0, bytes: 0, open: false };
      for (const { key, event } of entries) loaded.push([{ key, event, sent: key <= sentThrough }, page]);
    }
    // An entry stored twice (a move to a page of its own cut short, see update()): the copy in the
    // page with the greater key is the later one.
    loaded.sort(([a, pageA], [b, pageB]) => (a.key !== b.key ? (a.key < b.key ? -1 : 1) : pageA.key < pageB.key ? -1 : 1));
    for (let i = 0; i < loaded.length; i++) {
      const [entry, page] = loaded[i]!;
      if (loaded[i + 1]?.[0].key === entry.key) {
        // The stale copy must go from storage too, or it comes back once the moved entry leaves the log.
        this.stale.add(page);
        continue;
      }
      this.insert(entry, page);
    }
    const last = this.order.at(-1)?.key ?? '';
    const latest = last > sentThrough ? last : sentThrough;
    if (latest) {
      // Both parts: a clock that reads the same or an earlier millisecond after a restart must not reuse a key.
      this.lastMillis = Number(latest.slice(0, 15));
      this.counter = Number(latest.slice(16));
    }
  }

  /**
   * The rewrites of pages read back with a stale copy of an entry that a
   * crash kept from being removed when it moved to a page of its own. To be
   * written by the tab that leads, before it changes the log; once.
   */
  repairs(): MetaWrite[] {
    const writes = [...this.stale].map((page) => this.pageWrite(page));
    this.stale.clear();
    return writes;
  }

  get sentThrough(): string {
    return this.sentKey;
  }

  /**
   * A key later than every key in the log, also across restarts. Kept apart
   * from the hybrid logical clock: logging order must not move event clocks.
   */
  nextKey(): string {
    const now = Date.now();
    if (now > this.lastMillis) {
      this.lastMillis = now;
      this.counter = 0;
    } else {
      this.counter++;
    }
    return `${String(this.lastMillis).padStart(15, '0')}-${String(this.counter).padStart(9, '0')}`;
  }

  get size(): number {
    return this.count;
  }

  /** Moves whenever a document joins or leaves the log (see documents()). */
  get documentsVersion(): number {
    return this.membership;
  }

  /** The documents that hold an entry, per collection. */
  documents(): PendingDocuments {
    const documents: Record<string, string[]> = {};
    for (const [collection, ids] of this.byDocument.collections()) documents[collection] = [...ids].sort();
    return documents;
  }

  forDocument(collection: string, documentId: string): readonly PendingEntry[] {
    return this.byDocument.get(collection, documentId) ?? [];
  }

  /**
   * The oldest entries, up to `limit` of them and `maxBytes` of JSON (at least
   * one entry), skipping those for which `skip` says so.
   */
  head(limit: number, skip?: (entry: PendingEntry) => boolean, maxBytes = Number.POSITIVE_INFINITY): PendingEntry[] {
    const result: PendingEntry[] = [];
    // Never below the batch's JSON length: cheap bounds while they fit, exact lengths from there on.
    let bytes = 0;
    for (let i = this.first; i < this.order.length && result.length < limit; i++) {
      const entry = this.order[i]!;
      if (!entry.page || skip?.(entry)) continue;
      if (maxBytes !== Number.POSITIVE_INFINITY) {
        bytes += bytes + entry.bound <= maxBytes ? entry.bound : JSON.stringify(entry.event).length;
        if (bytes > maxBytes && result.length > 0) break;
      }
      result.push(entry);
    }
    return result;
  }

  all(): PendingEntry[] {
    const result: PendingEntry[] = [];
    for (let i = this.first; i < this.order.length; i++) if (this.order[i]!.page) result.push(this.order[i]!);
    return result;
  }

  /** Appends an entry (a copy: the log's entries are those it hands out); entries added before the next write share pages. */
  add(entry: PendingEntry): MetaWrite {
    const bound = jsonLengthBound(entry.event);
    let page = this.openPage;
    if (!page?.open || page.count >= PAGE_SIZE || (page.count > 0 && page.bytes + bound > PAGE_BYTES)) {
      page = this.openPage = { id: pendingId(entry.key), key: entry.key, entries: [], count: 0, bytes: 0, open: true };
    }
    this.insert(entry, page, bound);
    return this.pageWrite(page);
  }

  /**
   * Replaces an unsent entry's event in place; it keeps its place in the log.
   * An entry that shares a written page with others moves to a page of its
   * own first, so that editing one document again and again (after a bulk
   * import made offline, say) rewrites that document's entry, not a page of
   * a hundred. An entry this log does not hold (read before the log was read
   * again, when a tab took the lead) is left alone: the log read later is
   * the truth.
   */
  update(entry: PendingEntry, event: PendingEntry['event']): MetaWrite[] {
    const held = this.held(entry);
    if (!held) return [];
    const page = held.page;
    held.event = event;
    held.bound = jsonLengthBound(event);
    if (page.open || page.count === 1) return [this.pageWrite(page)];
    page.count--;
    // Its key sorts after the entry's, and so after every key of the page it leaves.
    const own: Page = { id: pendingId(`${held.key}+`), key: `${held.key}+`, entries: [held], count: 1, bytes: held.bound, open: false };
    held.page = own;
    // The new page first: a crash between the two writes leaves the entry twice, never not at all.
    return [this.pageWrite(own), this.pageWrite(page)];
  }

  /**
   * Marks the entries sent and moves the watermark past them. Returns true
   * when the watermark moved and must be persisted before the entries leave.
   * Entries the batch skipped (held back by a conflict) below the watermark
   * count as sent too: they are frozen, never rewritten, which only costs
   * them the collapsing of later writes.
   */
  markSent(entries: readonly PendingEntry[]): boolean {
    // Every entry up to the watermark is sent already, and new keys always sort after it.
    const last = entries.reduce((top, entry) => (entry.key > top ? entry.key : top), this.sentKey);
    if (last === this.sentKey) return false;
    this.sentKey = last;
    for (let i = this.first; i < this.order.length; i++) {
      const entry = this.order[i]!;
      if (entry.key > last) break;
      entry.sent = true;
    }
    return true;
  }

  remove(entry: PendingEntry): MetaWrite {
    const held = this.held(entry);
    if (!held) return NO_WRITE;
    const page = held.page;
    (held as LogEntry).page = undefined;
    page.count--;
    this.count--;
    this.gone++;
    const { collection, documentId } = held.event;
    const list = this.byDocument.get(collection, documentId);
    // A new list, not a change in place: callers may hold the one forDocument() gave them.
    if (list && list.length > 1) this.byDocument.set(collection, documentId, list.filter((other) => other !== held));
    else if (this.byDocument.delete(collection, documentId)) this.membership++;
    this.compact();
    return this.pageWrite(page);
  }

  removeDocument(collection: string, documentId: string): MetaWrite[] {
    return [...this.forDocument(collection, documentId)].map((entry) => this.remove(entry));
  }

  clear(filter: (entry: PendingEntry) => boolean = () => true): MetaWrite[] {
    return this.all().filter(filter).map((entry) => this.remove(entry));
  }

  /** The entry as this log holds it, if it does. */
  private held(entry: PendingEntry): (LogEntry & { page: Page }) | undefined {
    const held = entry as Partial<LogEntry>;
    return held.log === this && held.page ? (held as LogEntry & { page: Page }) : undefined;
  }

  /**
   * Skips the entries that left from the front, and drops those that left
   * from `order` once they are most of it: also those behind an entry that
   * stays (one held back by a manual conflict for days, while everything
   * logged after it is pushed and acknowledged).
   */
  private compact(): void {
    while (this.first < this.order.length && !this.order[this.first]!.page) {
      this.first++;
      this.gone--;
    }
    if (this.count === 0) {
      this.order = [];
      this.first = 0;
      this.gone = 0;
    } else if (this.gone > 1024 && this.gone > this.count) {
      this.order = this.order.filter((entry, i) => i >= this.first && entry.page);
      this.first = 0;
      this.gone = 0;
    } else if (this.first > 1024 && this.first * 2 > this.order.length) {
      this.order = this.order.slice(this.first);
      this.first = 0;
    }
  }

  private insert({ key, event, sent }: PendingEntry, page: Page, bound = jsonLengthBound(event)): void {
    const entry: LogEntry = { key, event, sent, log: this, page, bound };
    page.entries.push(entry);
    page.count++;
    page.bytes += entry.bound;
    this.count++;
    // Keys only grow (nextKey(), and a log read back is sorted): a key out of order is placed where it belongs.
    const last = this.order.at(-1);
    if (!last || last.key < key) this.order.push(entry);
    else {
      let at = this.order.length;
      while (at > this.first && this.order[at - 1]!.key > key) at--;
      this.order.splice(at, 0, entry);
    }
    const list = this.byDocument.get(event.collection, event.documentId);
    if (list) list.push(entry);
    else {
      this.byDocument.set(event.collection, event.documentId, [entry]);
      this.membership++;
    }
  }

  /** The write of a page as it will be when the write is made: deleted once it holds no entry. */
  private pageWrite(page: Page): MetaWrite {
    page.write ??= {
      id: page.id,
      kind: 'pending',
      value: (): StoredPage | undefined => {
        page.open = false;
        if (page.count === 0) {
          page.entries = [];
          return undefined;
        }
        // Entries that left the page are dropped from it for good here.
        page.entries = page.entries.filter((entry) => entry.page === page);
        return { key: page.key, entries: page.entries.map(({ key, event }) => ({ key, event })) };
      },
    };
    return page.write;
  }
}
