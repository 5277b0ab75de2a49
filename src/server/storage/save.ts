import type { DocumentHead } from '../../shared/protocol/index.js';
import type { IncomingEvent, SaveResult } from './types.js';

/** How the save decision reads a head in the form a storage keeps it (an object, a row). */
export interface HeadReader<Head> {
  /** The id of the event that made this version of the document. */
  eventId(head: Head): string;
  /** The head a conflict answers; read only for a conflict. */
  conflictHead(head: Head): DocumentHead;
}

/** Heads kept as DocumentHead objects, answered as they are. */
export const documentHeads: HeadReader<DocumentHead> = {
  eventId: (head) => head.eventId,
  conflictHead: (head) => head,
};

/** An answer that stores nothing. */
export type Refusal = Extract<SaveResult, { status: 'duplicate' | 'conflict' }>;

/**
 * The save decision for one event (see SaveResult), the same for every
 * storage. The storage looks up, in the transaction that would append the
 * event and after the events before it in the same call, `knownSeq`: the
 * sequence the event's id was stored under, compacted ids included
 * (undefined for a new id), and `head`: the event's document's current head
 * (undefined when it holds no version; a storage need not look it up when
 * `knownSeq` is set, since the id alone decides a duplicate). Answers a
 * duplicate or a conflict, or null: the event is appended under a new
 * sequence.
 */
export function decideSave<Head>(
  event: Pick<IncomingEvent, 'id' | 'baseEventId'>,
  knownSeq: number | undefined,
  head: Head | undefined,
  heads: HeadReader<Head>,
): Refusal | null {
  if (knownSeq !== undefined) return { id: event.id, status: 'duplicate', seq: knownSeq };
  if (head === undefined) {
    return event.baseEventId === null ? null : { id: event.id, status: 'conflict', head: null };
  }
  return heads.eventId(head) === event.baseEventId ? null : { id: event.id, status: 'conflict', head: heads.conflictHead(head) };
}

/** The head of a document once `event` is appended under `seq`, holding `data` (the storage's copy of the event's). */
export function headOf(event: IncomingEvent, seq: number, data: DocumentHead['data']): DocumentHead {
  return {
    collection: event.collection,
    documentId: event.documentId,
    seq,
    eventId: event.id,
    data,
    deleted: event.op === 'delete',
    hlc: event.hlc,
    clientId: event.clientId,
  };
}
