import { changesPage } from '../size.js';
import type { ChangesPage } from '../types.js';
import { decodeEvent, type EventRow, type SizeRow } from './statements.js';

/**
 * Pages of getChangesAfter kept for readers that ask the same again: after a
 * restart thousands of devices pull from the same checkpoint at once, and
 * each read would cost the event loop the same rows. Heads change only by a
 * save, which takes a new sequence, so a page read while the latest
 * sequence was S is the answer to the same query for as long as it is S.
 */
const SHARED_PAGES = 16;
/** Pages with more events than this are not kept (the memory of a few full pages is enough). */
const SHARED_PAGE_EVENTS = 5000;

/** Recent pages of getChangesAfter by query, least recently used first, each with the latest sequence it was read at. */
export class SharedPages {
  private readonly pages = new Map<string, { latest: number; page: ChangesPage }>();

  /** The page of the query `key` while the latest sequence is `latest`: the one kept, or else `read()`'s, kept if small enough. */
  get(key: string, latest: number, read: () => ChangesPage): ChangesPage {
    const shared = this.pages.get(key);
    if (shared) {
      this.pages.delete(key);
      if (shared.latest === latest) {
        this.pages.set(key, shared);
        return shared.page;
      }
    }
    const page = read();
    if (page.length <= SHARED_PAGE_EVENTS) {
      this.pages.set(key, { latest, page });
      if (this.pages.size > SHARED_PAGES) this.pages.delete(this.pages.keys().next().value!);
    }
    return page;
  }

  clear(): void {
    this.pages.clear();
  }
}

/**
 * A page of changes within `maxBytes`: where the page ends, from the sizes
 * alone; then the page up to there. A write in between (by another process
 * on the same file) only moves heads to sequences above `through`, never
 * into the page.
 */
export function readChangesPage(sizes: () => Iterable<SizeRow>, read: (through: number) => EventRow[], maxBytes: number | undefined): ChangesPage {
  let through = Number.MAX_SAFE_INTEGER;
  let cut = false;
  if (maxBytes !== undefined) {
    let bytes = 0;
    let taken = 0;
    // Stepped one row at a time, and left at the first that does not fit.
    for (const row of sizes()) {
      bytes += row.bytes;
      if (bytes > maxBytes && taken > 0) {
        cut = true;
        break;
      }
      through = row.seq;
      taken++;
    }
  }
  return changesPage(read(through).map(decodeEvent), cut);
}
