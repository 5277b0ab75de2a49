/** What every part of the conformance suite shares: the storage under test, and events made to order. */
import { expect } from 'vitest';
import { formatHlc } from '../shared/hlc.js';
import type { StoredEvent } from '../shared/protocol/index.js';
import type { IncomingEvent, SaveResult, ScopedChange, SyncStorage } from '../server/storage/types.js';

/** What a storage author's setup gives the suite, once per test. */
export interface StorageUnderTest {
  /** A new, empty storage; the suite calls init() on it. */
  storage: SyncStorage;
  /** Closes whatever instances are open and removes their data. Without it, the suite closes the storage it used last. */
  cleanup?(): Promise<void>;
  /** For durable storages: after the suite closed the last instance, opens a new one over the same data. */
  reopen?(): Promise<SyncStorage>;
}

/** A storage of a test's own, with a cleanup that is always there. */
export interface OpenedStorage {
  storage: SyncStorage;
  cleanup(): Promise<void>;
}

/** What each part of the suite is given: the storage of the running test, and ways to get more. */
export interface Conformance {
  /** The storage of the running test, initialized; reopen() replaces it. */
  readonly storage: SyncStorage;
  /** Whether the setup can reopen a storage over the same data. */
  readonly durable: boolean;
  /** Closes the running test's storage and opens, and initializes, a new one over the same data. */
  reopen(): Promise<SyncStorage>;
  /** A fresh storage besides the running test's (the randomized tests take one per case); not initialized. */
  open(): Promise<OpenedStorage>;
  /** Saves events into the running test's storage that must all be accepted, and returns their sequences. */
  saveAccepted(...events: IncomingEvent[]): Promise<number[]>;
}

export const FC_SEED = Number(process.env.FC_SEED ?? 20_240_611);

interface EventFields {
  documentId: string;
  base?: string | null;
  collection?: string;
  op?: IncomingEvent['op'];
  data?: Record<string, unknown>;
  patch?: IncomingEvent['patch'];
  clientId?: string;
  id?: string;
}

let madeEvents = 0;
/** A valid incoming event; ids are unique across the whole run so no two tests can collide. */
export function makeEvent(fields: EventFields): IncomingEvent {
  const n = ++madeEvents;
  const clientId = fields.clientId ?? 'client-a';
  const event: IncomingEvent = {
    id: fields.id ?? `evt-${String(n).padStart(6, '0')}-${Math.random().toString(36).slice(2, 8)}`,
    collection: fields.collection ?? 'todos',
    documentId: fields.documentId,
    op: fields.op ?? (fields.base ? 'update' : 'insert'),
    data: fields.data ?? { id: fields.documentId, title: `version ${n}`, done: n % 2 === 0 },
    baseEventId: fields.base ?? null,
    hlc: formatHlc({ millis: 1_700_000_000_000 + n, counter: 0, node: clientId }),
    clientId,
  };
  if (fields.patch) event.patch = fields.patch;
  return event;
}

/** What storage must give back for an accepted event, apart from its server time. */
export const stored = (event: IncomingEvent, seq: number) => ({ ...event, seq });
export const withoutTime = (events: StoredEvent[]) => events.map(({ serverTime, ...rest }) => rest);
/** What a scoped page holds of an event (see ScopedChange): a storage may give more, and the rest is not compared. */
export const asChange = (event: Omit<IncomingEvent, 'baseEventId'>, seq: number, leave?: true) => ({
  id: event.id,
  collection: event.collection,
  documentId: event.documentId,
  op: event.op,
  data: event.data,
  hlc: event.hlc,
  seq,
  clientId: event.clientId,
  ...(leave ? { leave } : {}),
});
export const changesOf = (changes: readonly ScopedChange[]) => changes.map((change) => asChange(change, change.seq, change.leave));
export const ids = (events: { id: string }[]) => events.map((event) => event.id);

/** A small deterministic generator (mulberry32), so randomized cases repeat exactly. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function acceptedSeq(result: SaveResult | undefined): number {
  expect(result?.status).toBe('accepted');
  return (result as { seq: number }).seq;
}

export type Data = Record<string, unknown>;
export interface Written {
  seq: number;
  event: IncomingEvent;
}
