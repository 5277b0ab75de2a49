import { DocumentMap } from '../shared/document-map.js';
import type { Shadow } from './documents.js';
import type { MetaWrite } from './meta-store.js';

/** How a page of acknowledged versions is stored: `[collection, documentId, version]` each. */
export interface StoredAckedPage {
  versions: [string, string, Shadow][];
}

/** One acknowledged version as a page stores it. */
type Held = [collection: string, documentId: string, version: Shadow];

interface Page {
  id: string;
  /** Every version put in this page, in order; those no longer the document's newest left it (see live()). */
  versions: Held[];
  /** How many of `versions` the page still holds. */
  count: number;
  /** The write of this page (see pageWrite()); one object however often the page changes. */
  write?: MetaWrite;
}

/**
 * The server versions of pushed documents, as the server acknowledged them:
 * the base of each document's next change. An acknowledged batch is stored
 * as one page (one storage write, not one per document) and later folded
 * into per-document shadows when the client is idle (see foldAcked in
 * replication/shadows.ts), so that pushing stays cheap and memory holds
 * only what was acknowledged since the last idle moment.
 *
 * A version leaves its page, durably, when the replicator keeps or drops the
 * document's shadow (forget): a page read back after a restart then never
 * outranks what came after it.
 */
export class AckedVersions {
  private readonly pages = new Map<string, Page>();
  /** Each document's newest version and the page holding it: a page holds a version while this names it. */
  private readonly byDocument = new DocumentMap<{ page: Page; held: Held }>();

  constructor(stored: Iterable<[string, StoredAckedPage]> = []) {
    for (const [id, value] of stored) {
      const page: Page = { id, versions: [], count: 0 };
      this.pages.set(id, page);
      for (const [collection, documentId, version] of value.versions) this.put(page, collection, documentId, version);
    }
    // Pages whose every version was outranked by a later page hold nothing: they are dropped at the next fold.
  }

  get(collection: string, documentId: string): Shadow | undefined {
    return this.byDocument.get(collection, documentId)?.held[2];
  }

  /**
   * Keeps one acknowledged batch as one page, named `id`: the caller names
   * it after a log entry removed in the same write, so no later batch can
   * have the name (a page already there is added to, never replaced). An
   * older page holding one of its documents is not rewritten: the newer
   * version has the higher sequence, which is what counts when pages are
   * read back.
   */
  add(id: string, versions: readonly [string, string, Shadow][]): MetaWrite {
    let page = this.pages.get(id);
    if (!page) {
      page = { id, versions: [], count: 0 };
      this.pages.set(id, page);
    }
    for (const [collection, documentId, version] of versions) this.put(page, collection, documentId, version);
    return this.pageWrite(page);
  }

  /** Drops the document's acknowledged version: a newer one is kept elsewhere. */
  forget(collection: string, documentId: string): MetaWrite[] {
    const current = this.byDocument.get(collection, documentId);
    if (!current) return [];
    this.byDocument.delete(collection, documentId);
    current.page.count--;
    return [this.pageWrite(current.page)];
  }

  /** The oldest page with the versions it still holds (empty when all were outranked), if any. */
  oldest(): { id: string; versions: [string, string, Shadow][] } | undefined {
    const page = this.pages.values().next().value as Page | undefined;
    return page && { id: page.id, versions: this.live(page).slice() };
  }

  /** The write that deletes a page; call drop() once it is made. */
  deletion(id: string): MetaWrite {
    return { id, kind: 'acked' };
  }

  /** Forgets a folded page whose deletion was written: its versions are kept as shadows now. */
  drop(id: string): void {
    const page = this.pages.get(id);
    if (!page) return;
    for (const [collection, documentId] of this.live(page)) this.byDocument.delete(collection, documentId);
    this.pages.delete(id);
  }

  get pageCount(): number {
    return this.pages.size;
  }

  private put(page: Page, collection: string, documentId: string, version: Shadow): void {
    const current = this.byDocument.get(collection, documentId);
    if (current && current.held[2].seq > version.seq) return;
    if (current) current.page.count--;
    const held: Held = [collection, documentId, version];
    page.versions.push(held);
    page.count++;
    this.byDocument.set(collection, documentId, { page, held });
  }

  /** The versions the page still holds; those that left it are dropped from it for good here. */
  private live(page: Page): Held[] {
    if (page.versions.length !== page.count) page.versions = page.versions.filter((held) => this.byDocument.get(held[0], held[1])?.held === held);
    return page.versions;
  }

  private pageWrite(page: Page): MetaWrite {
    page.write ??= {
      id: page.id,
      kind: 'acked',
      // A copy: later versions are added to the page's own list, not to what was stored.
      value: (): StoredAckedPage | undefined => (page.count === 0 ? undefined : { versions: this.live(page).slice() }),
    };
    return page.write;
  }
}
