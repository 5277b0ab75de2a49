/**
 * A map keyed by collection and document id. Hot paths look documents up
 * several times each; a joined string key would be built, flattened and
 * hashed again on every lookup, while the two strings it is made of are
 * hashed once and keep their hash.
 */
export class DocumentMap<V> {
  private readonly byCollection = new Map<string, Map<string, V>>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(collection: string, documentId: string): V | undefined {
    return this.byCollection.get(collection)?.get(documentId);
  }

  has(collection: string, documentId: string): boolean {
    return this.byCollection.get(collection)?.has(documentId) ?? false;
  }

  set(collection: string, documentId: string, value: V): this {
    let documents = this.byCollection.get(collection);
    if (!documents) {
      documents = new Map();
      this.byCollection.set(collection, documents);
    }
    const before = documents.size;
    documents.set(documentId, value);
    this.count += documents.size - before;
    return this;
  }

  delete(collection: string, documentId: string): boolean {
    const documents = this.byCollection.get(collection);
    if (!documents?.delete(documentId)) return false;
    this.count--;
    if (documents.size === 0) this.byCollection.delete(collection);
    return true;
  }

  clear(): void {
    this.byCollection.clear();
    this.count = 0;
  }

  /** Forgets every document of one collection. */
  clearCollection(collection: string): void {
    this.count -= this.byCollection.get(collection)?.size ?? 0;
    this.byCollection.delete(collection);
  }

  /** The document ids of each collection that holds any, in insertion order. */
  *collections(): IterableIterator<[collection: string, documentIds: IterableIterator<string>]> {
    for (const [collection, documents] of this.byCollection) yield [collection, documents.keys()];
  }

  /** Every value, by collection and then in insertion order. */
  *values(): IterableIterator<V> {
    for (const documents of this.byCollection.values()) yield* documents.values();
  }
}
