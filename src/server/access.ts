/** Authorization of every read and write, and what of a document may leave the server. */
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { DocumentHead, StoredEvent, SyncEvent } from '../shared/protocol/index.js';
import type { AccessOperation, Authorize, AuthorizeRead } from './options.js';
import type { Redactor } from './redact.js';

export interface AccessContext<User> {
  authorize?: Authorize<User>;
  /** When given, reads ask it instead of `authorize`. */
  authorizeRead?: AuthorizeRead<User>;
  redactor: Redactor;
  logger: Logger;
}

/**
 * Asks `authorize`. An app function that throws has not decided: the whole
 * message fails with AUTHORIZATION_FAILED, which clients retry, rather than
 * a denial that would turn a passing outage into a refused write or a
 * skipped read.
 */
export async function allowed<User>(
  ctx: AccessContext<User>,
  user: User,
  collection: string,
  operation: AccessOperation,
  document: Record<string, unknown>,
): Promise<boolean> {
  if (!ctx.authorize) return true;
  try {
    return (await ctx.authorize(user, collection, operation, document)) === true;
  } catch (error) {
    ctx.logger.error({ err: error, collection, operation }, 'authorize threw; the message fails and will be retried');
    throw new SyncError('AUTHORIZATION_FAILED', `could not check access to ${collection} (${operation}); try again later`);
  }
}

/**
 * A write must be allowed on the new document and, when the server holds a
 * version of it, on that version too: otherwise a user could take over
 * another's document by writing it with their own owner field.
 */
export async function assertMayWrite<User>(ctx: AccessContext<User>, user: User, event: SyncEvent, head: DocumentHead | undefined): Promise<void> {
  if (!ctx.authorize) return;
  const ok =
    (await allowed(ctx, user, event.collection, event.op, event.data)) &&
    (!head || (await allowed(ctx, user, event.collection, event.op, head.data)));
  if (!ok) throw unauthorized(event);
}

export function unauthorized(event: SyncEvent): SyncError {
  return new SyncError('UNAUTHORIZED', `not allowed to ${event.op} ${event.collection}/${event.documentId}`, {
    collection: event.collection,
    documentId: event.documentId,
    operation: event.op,
  });
}

/**
 * Asks `authorizeRead` about `documents` of one collection: one verdict per
 * document. Undecided (a throw, an answer that is not one boolean per
 * document) fails as an undecided `authorize` does.
 */
async function allowedBatch<User>(ctx: AccessContext<User>, authorizeRead: AuthorizeRead<User>, user: User, collection: string, documents: Record<string, unknown>[]): Promise<boolean[]> {
  let answer: unknown;
  try {
    answer = await authorizeRead(user, collection, documents);
  } catch (error) {
    ctx.logger.error({ err: error, collection }, 'authorizeRead threw; the message fails and will be retried');
    throw new SyncError('AUTHORIZATION_FAILED', `could not check read access to ${collection}; try again later`);
  }
  if (!Array.isArray(answer) || answer.length !== documents.length) {
    ctx.logger.error({ collection, documents: documents.length }, 'authorizeRead must answer one boolean per document');
    throw new SyncError('AUTHORIZATION_FAILED', `could not check read access to ${collection}; try again later`);
  }
  return answer.map((verdict) => verdict === true);
}

/** Whether `user` may read each event, in order: one `authorizeRead` call per collection, else `authorize` per event. */
async function readVerdicts<User>(ctx: AccessContext<User>, user: User, events: readonly Pick<StoredEvent, 'collection' | 'data'>[]): Promise<boolean[]> {
  const verdicts = new Array<boolean>(events.length);
  const authorizeRead = ctx.authorizeRead;
  if (!authorizeRead) {
    for (let i = 0; i < events.length; i++) verdicts[i] = await allowed(ctx, user, events[i]!.collection, 'read', events[i]!.data);
    return verdicts;
  }
  // A pull page may span collections; a live message never does.
  const byCollection = new Map<string, number[]>();
  for (let i = 0; i < events.length; i++) {
    const list = byCollection.get(events[i]!.collection);
    if (list) list.push(i);
    else byCollection.set(events[i]!.collection, [i]);
  }
  for (const [collection, indexes] of byCollection) {
    const answer = await allowedBatch(ctx, authorizeRead, user, collection, indexes.map((i) => events[i]!.data));
    indexes.forEach((i, k) => (verdicts[i] = answer[k]!));
  }
  return verdicts;
}

/** The events `user` may read, stripped of sensitive fields; the others are left out. */
export async function readable<User, E extends Pick<StoredEvent, 'collection' | 'data'>>(ctx: AccessContext<User>, user: User, events: E[]): Promise<E[]> {
  // Nothing to check or strip: the common case of a pull, without a promise per event.
  if (!ctx.authorize && !ctx.authorizeRead && !ctx.redactor.active) return events;
  if (!ctx.authorize && !ctx.authorizeRead) return ctx.redactor.events(events);
  const verdicts = await readVerdicts(ctx, user, events);
  const visible: E[] = [];
  for (let i = 0; i < events.length; i++) {
    if (verdicts[i]) visible.push(ctx.redactor.event(events[i]!));
  }
  return visible;
}

/** A conflict answer's head as `user` may see it, or undefined when they may not read it. */
export async function readableHead<User>(ctx: AccessContext<User>, user: User, head: DocumentHead): Promise<DocumentHead | undefined> {
  const ok = ctx.authorizeRead
    ? (await allowedBatch(ctx, ctx.authorizeRead, user, head.collection, [head.data]))[0]
    : await allowed(ctx, user, head.collection, 'read', head.data);
  if (!ok) return undefined;
  return ctx.redactor.head(head);
}
