import type { DocumentHead, Operation, StoredEvent } from '../../shared/protocol/index.js';

/** The columns of an event row, in the order the SQL storages select them. */
export const EVENT_COLUMNS = 'seq, id, collection, document_id, op, data, patch, base_event_id, hlc, client_id, server_time';
/** The columns of a head row, in the order the SQL storages select and insert them. */
export const HEAD_COLUMNS = 'collection, document_id, seq, event_id, data, deleted, hlc, client_id';

/**
 * An event as a SQL storage reads it back. The columns are the same in every
 * SQL storage; only the types its driver answers differ: `Json` for a JSON
 * document (text, or already parsed), `Int` for a sequence or a time.
 */
export interface EventRow<Json, Int> {
  seq: Int;
  id: string;
  collection: string;
  document_id: string;
  op: Operation;
  data: Json;
  patch: Json | null;
  base_event_id: string | null;
  hlc: string;
  client_id: string;
  server_time: Int;
}

/** A document head as a SQL storage reads it back; `Flag` is the driver's type for a boolean column. */
export interface HeadRow<Json, Int, Flag> {
  collection: string;
  document_id: string;
  seq: Int;
  event_id: string;
  data: Json;
  deleted: Flag;
  hlc: string;
  client_id: string;
}

/** How one driver's column values become ours. */
export interface ColumnTypes<Json, Int, Flag> {
  json(value: Json): unknown;
  int(value: Int): number;
  flag(value: Flag): boolean;
}

/** The decoders of one driver's event and head rows. */
export function rowDecoders<Json, Int, Flag>(columns: ColumnTypes<Json, Int, Flag>) {
  return {
    event: (row: EventRow<Json, Int>): StoredEvent => {
      const event: StoredEvent = {
        id: row.id,
        collection: row.collection,
        documentId: row.document_id,
        op: row.op,
        data: columns.json(row.data) as StoredEvent['data'],
        baseEventId: row.base_event_id,
        hlc: row.hlc,
        seq: columns.int(row.seq),
        clientId: row.client_id,
        serverTime: columns.int(row.server_time),
      };
      if (row.patch !== null) event.patch = columns.json(row.patch) as StoredEvent['patch'];
      return event;
    },
    head: (row: HeadRow<Json, Int, Flag>): DocumentHead => ({
      collection: row.collection,
      documentId: row.document_id,
      seq: columns.int(row.seq),
      eventId: row.event_id,
      data: columns.json(row.data) as DocumentHead['data'],
      deleted: columns.flag(row.deleted),
      hlc: row.hlc,
      clientId: row.client_id,
    }),
  };
}
