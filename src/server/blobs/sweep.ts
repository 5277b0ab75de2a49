/**
 * Removing attachment content nothing needs: blobs that no kept event
 * names (after compaction removed the versions that did), and uploads
 * abandoned half way. Blobs stored recently are kept, so that an upload
 * whose push has not arrived yet survives; a client whose push comes after
 * its blob was swept is told ATTACHMENT_MISSING and uploads it again.
 */
import { digestsOf } from '../../shared/attachments.js';
import type { SyncStorage } from '../storage/types.js';
import type { BlobStore } from './types.js';

/** Events read per page while collecting the digests still named. */
const PAGE = 5000;

export interface SweepGrace {
  /** A blob stored less than this long ago is kept, named or not (ms). */
  blobMs: number;
  /** An upload appended to less than this long ago is kept (ms). */
  uploadMs: number;
}

export const DEFAULT_SWEEP_GRACE: SweepGrace = { blobMs: 60 * 60 * 1000, uploadMs: 24 * 60 * 60 * 1000 };

/** Every digest a kept event of `storage` names. */
export async function referencedDigests(storage: SyncStorage): Promise<Set<string>> {
  const referenced = new Set<string>();
  let checkpoint = 0;
  for (;;) {
    const page = await storage.getEventsAfter(checkpoint, { limit: PAGE });
    for (const event of page) for (const digest of digestsOf(event.data)) referenced.add(digest);
    if (page.length < PAGE) return referenced;
    checkpoint = page[page.length - 1]!.seq;
  }
}

export async function sweepBlobs(storage: SyncStorage, blobs: BlobStore, grace: SweepGrace = DEFAULT_SWEEP_GRACE, now = Date.now()): Promise<{ blobs: number; uploads: number }> {
  // Read before the digests: a blob stored while they are collected is younger than the cutoff.
  const options = { blobsBefore: now - grace.blobMs, uploadsBefore: now - grace.uploadMs };
  return blobs.sweep(await referencedDigests(storage), options);
}
