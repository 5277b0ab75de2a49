import type { DocumentHead } from '../../../shared/protocol/index.js';
import { decideSave, headOf, type HeadReader } from '../save.js';
import type { IncomingEvent, SaveResult } from '../types.js';

/** What a group commit read under the write lock: the sequences of the ids it saves, and the heads of its documents (by headKey). */
export interface StoredState {
  seqById: Map<string, number>;
  heads: Map<string, DocumentHead>;
}

export interface SavePlan {
  results: SaveResult[];
  /** The indexes of the events to append, in the order of their sequences. */
  appended: number[];
  /** For every document changed, the index of its last appended event: its new head. */
  lastOfDocument: Map<string, number>;
}

export const headKey = (collection: string, documentId: string) => `${collection}\u0000${documentId}`;

/** Each conflict answers a copy of its own: a head planned in this group holds the incoming event's data, and conflicts may share a head. */
const plannedHeads: HeadReader<DocumentHead> = { eventId: (head) => head.eventId, conflictHead: (head) => structuredClone(head) };

/**
 * Decides every event in order, as if each were applied before the next: a
 * later event may build on, or retry, an earlier one (of its own call or of
 * an earlier call in the same group). Leaves `stored` as it was.
 */
export function planSave(events: readonly IncomingEvent[], stored: StoredState, nextSeq: () => number): SavePlan {
  const seqById = new Map(stored.seqById);
  const heads = new Map(stored.heads);
  const plan: SavePlan = { results: [], appended: [], lastOfDocument: new Map() };
  events.forEach((event, index) => {
    const key = headKey(event.collection, event.documentId);
    const refused = decideSave(event, seqById.get(event.id), heads.get(key), plannedHeads);
    if (refused) {
      plan.results.push(refused);
      return;
    }
    const seq = nextSeq();
    seqById.set(event.id, seq);
    heads.set(key, headOf(event, seq, event.data));
    plan.appended.push(index);
    plan.lastOfDocument.set(key, index);
    plan.results.push({ id: event.id, status: 'accepted', seq });
  });
  return plan;
}
