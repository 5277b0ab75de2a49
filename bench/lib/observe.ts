/** Waiting for documents to show up in a client's collection, through RxDB's change stream (`collection.$`). */
import type { RxCollection } from 'rxdb';
import { filter, firstValueFrom } from 'rxjs';
import { Counter } from './counter.js';

/** Resolves when a write of document `id` reaches `collection`. Call before the write is made. */
export function arrival(collection: RxCollection, id: string): Promise<unknown> {
  return firstValueFrom(collection.$.pipe(filter((event) => event.documentId === id)));
}

/** Counts inserts of documents whose id starts with `prefix`, as they reach `collection`. */
export function countArrivals(collection: RxCollection, prefix: string): { counter: Counter; stop(): void } {
  const counter = new Counter();
  const subscription = collection.$.subscribe((event) => {
    if (event.operation === 'INSERT' && event.documentId.startsWith(prefix)) counter.add(1);
  });
  return { counter, stop: () => subscription.unsubscribe() };
}
