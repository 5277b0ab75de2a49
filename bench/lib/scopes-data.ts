/**
 * The documents of the scopes scenario: field assets split among crews, a
 * seeded layout of which crew holds which asset, and seeding straight
 * through a server storage's saveEvents (no clients, no sockets).
 */
import { randomUUID } from 'node:crypto';
import { createRxDatabase, type RxCollection, type RxDatabase, type RxJsonSchema } from 'rxdb';
import type { IncomingEvent, SyncStorage } from 'rxdb-offline-sync/server';
// Only to stamp the seeded events, outside every timed span.
import { formatHlc } from '../../src/shared/hlc.js';
import { storage } from './database.js';
import { random } from './documents.js';

export interface Asset {
  id: string;
  crewId: string;
  title: string;
  done: boolean;
  priority: number;
  tags: string[];
}

export const assetSchema: RxJsonSchema<Asset> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 64 },
    crewId: { type: 'string', maxLength: 32 },
    title: { type: 'string' },
    done: { type: 'boolean' },
    priority: { type: 'number' },
    tags: { type: 'array', items: { type: 'string' } },
  },
  required: ['id', 'crewId', 'title', 'done', 'priority', 'tags'],
};

/** The crews the scenario names; every other asset belongs to one of the 19 other crews c0…c19. */
export const CREW = { scope: 'c7', small: 's5k', add1k: 'a1k', add5k: 'a5k' } as const;

export interface Layout {
  total: number;
  /** Assets per named crew. */
  counts: Record<string, number>;
  /** The crew of asset i, as an index into `crews`. */
  crewOf: Uint8Array;
  crews: string[];
}

/**
 * `total` assets: the scope crew holds `share` of them, the small crew and
 * the two crews a scope change adds hold 5000, 1000 and 5000, the rest is
 * shared by 19 other crews. Crews are shuffled over the sequence, so a
 * crew's assets are spread over the whole history, as in real use.
 */
export function makeLayout(total: number, share = 0.05): Layout {
  const named: [string, number][] = [
    [CREW.scope, Math.round(total * share)],
    [CREW.small, Math.min(5000, Math.round(total * 0.005))],
    [CREW.add1k, Math.min(1000, Math.round(total * 0.001))],
    [CREW.add5k, Math.min(5000, Math.round(total * 0.005))],
  ];
  const others = Array.from({ length: 20 }, (_, i) => `c${i}`).filter((crew) => crew !== CREW.scope);
  const rest = total - named.reduce((sum, [, count]) => sum + count, 0);
  const crews = [...named.map(([crew]) => crew), ...others];
  const counts: Record<string, number> = Object.fromEntries(named);
  others.forEach((crew, i) => (counts[crew] = Math.floor(rest / others.length) + (i < rest % others.length ? 1 : 0)));
  const crewOf = new Uint8Array(total);
  let at = 0;
  crews.forEach((crew, index) => {
    crewOf.fill(index, at, at + counts[crew]!);
    at += counts[crew]!;
  });
  const next = random(26);
  for (let i = total - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const swap = crewOf[i]!;
    crewOf[i] = crewOf[j]!;
    crewOf[j] = swap;
  }
  return { total, counts, crewOf, crews };
}

const WORDS = ['pole', 'valve', 'meter', 'pump', 'cable', 'switch', 'tank', 'gauge', 'relay', 'hatch', 'lamp', 'frame'];
const TAGS = ['north', 'south', 'urgent', 'later', 'inspect', 'repair', 'spare', 'leased'];

/** Asset i of the layout; the same i always gives the same asset. */
export function makeAsset(layout: Layout, i: number): Asset {
  const next = random(i + 1);
  const pick = <T>(list: readonly T[]) => list[Math.floor(next() * list.length)]!;
  let title = '';
  while (title.length < 40) title += `${pick(WORDS)} `;
  return {
    id: `asset-${String(i).padStart(7, '0')}`,
    crewId: layout.crews[layout.crewOf[i]!]!,
    title: title.slice(0, 40),
    done: next() < 0.3,
    priority: Math.floor(next() * 5),
    tags: [pick(TAGS), pick(TAGS), pick(TAGS)],
  };
}

/** The assets of `crew`, in id order (only they are made). */
export function crewAssets(layout: Layout, crew: string): Asset[] {
  const index = layout.crews.indexOf(crew);
  const assets: Asset[] = [];
  for (let i = 0; i < layout.total; i++) if (layout.crewOf[i] === index) assets.push(makeAsset(layout, i));
  return assets;
}

const SEED_WRITERS = 8;

/**
 * Writes the layout's assets into `full` (all of them) and `alone` (only
 * those `keep` selects), as inserts from eight writers with UUIDs for ids
 * and time-ordered event ids, in batches of `batch`: each batch is one
 * saveEvents call, which the SQL storages write in one transaction.
 * Returns the time spent, in ms.
 */
export async function seedAssets(layout: Layout, full: SyncStorage, alone: SyncStorage, keep: (asset: Asset) => boolean, batch = 25_000): Promise<number> {
  const started = performance.now();
  const millis = Date.now();
  const writers = Array.from({ length: SEED_WRITERS }, () => randomUUID());
  for (let start = 0; start < layout.total; start += batch) {
    const events: IncomingEvent[] = [];
    const kept: IncomingEvent[] = [];
    for (let i = start; i < Math.min(layout.total, start + batch); i++) {
      const asset = makeAsset(layout, i);
      const writer = writers[i % SEED_WRITERS]!;
      const event: IncomingEvent = {
        id: eventId(i),
        collection: 'assets',
        documentId: asset.id,
        op: 'insert',
        data: { ...asset },
        baseEventId: null,
        hlc: formatHlc({ millis, counter: i, node: writer }),
        clientId: writer,
      };
      events.push(event);
      if (keep(asset)) kept.push(event);
    }
    // Both at once: each storage writes its batch in a transaction of its own.
    await Promise.all([full.saveEvents(events), kept.length > 0 ? alone.saveEvents(kept) : undefined]);
  }
  return performance.now() - started;
}

export type AssetDatabase = RxDatabase<{ assets: RxCollection<Asset> }>;

let counter = 0;

export async function openAssetDatabase(): Promise<AssetDatabase> {
  const db = await createRxDatabase<{ assets: RxCollection<Asset> }>({
    name: `scopes${process.pid}x${(counter++).toString(36)}`,
    storage,
    multiInstance: false,
    eventReduce: true,
  });
  await db.addCollections({ assets: { schema: assetSchema } });
  return db;
}

/** A time-ordered event id of a UUID's length (as UUIDv7 orders them): the storage's index on ids grows at its end. */
function eventId(i: number): string {
  const hex = i.toString(16).padStart(12, '0');
  return `0190a000-${hex.slice(0, 4)}-7${hex.slice(4, 7)}-8${hex.slice(7, 10)}-${hex.slice(10)}0000000000`;
}

let touches = 0;

/**
 * Writes one event to a collection no client syncs: the latest sequence
 * moves, so a storage that keeps recent pages for readers asking the same
 * again answers the next sync from its tables, as a device's sync meets it.
 */
export async function touch(storage: SyncStorage): Promise<void> {
  const n = touches++;
  const node = 'bench-touch';
  await storage.saveEvents([
    { id: randomUUID(), collection: 'touch', documentId: `touch-${n}`, op: 'insert', data: { id: `touch-${n}` }, baseEventId: null, hlc: formatHlc({ millis: Date.now(), counter: n, node }), clientId: node },
  ]);
}
