/** Pulls: a page of the changes after a checkpoint, plain or in a scope, holding only what the user may read. */
import { SyncError } from '../../shared/errors.js';
import { parseMessage, pullMessageSchema, spanSet, toPullPage, type PullMessage, type PullPage, type RemoteEvent, type StoredEvent } from '../../shared/protocol/index.js';
import { matchesScope, parseScope, sameScope, toSelector } from '../../shared/scope.js';
import { readable } from '../access.js';
import { effectiveScope, mayBeScoped, type SocketScopes } from '../scopes.js';
import type { SyncStorage } from '../storage/types.js';
import { assertKnownCollection, storageFailure, type ServerContext, type SyncSocket } from './context.js';
import { followScope, scopeReply } from './subscribe.js';

export async function handlePull<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<PullPage> {
  const started = performance.now();
  const message = parseMessage(pullMessageSchema, raw, 'pull message');
  message.collections.forEach((collection) => assertKnownCollection(ctx, collection));
  const limit = Math.min(message.limit ?? ctx.options.defaultPullLimit, ctx.options.maxPullLimit);
  if (message.scope) return scopedPull(ctx, socket, message as typeof message & { scope: NonNullable<typeof message.scope> }, limit, started);
  // A plain pull gets no more than the rule allows either: its events are held to the rule's scopes,
  // and the reply names them, so that the client goes on with scoped pulls.
  const ruled: SocketScopes = {};
  for (const collection of message.collections) {
    if (!mayBeScoped(ctx.options, collection)) continue;
    const scope = await effectiveScope(ctx, socket.data.user, collection, null);
    if (scope !== null) ruled[collection] = [...scope];
  }
  let events: StoredEvent[];
  let hasMore: boolean;
  try {
    // Bounded in bytes as well as in count: a page of large documents is never one giant string to encode.
    const page = await ctx.storage.getChangesAfter(message.checkpoint, { collections: message.collections, limit, maxBytes: ctx.options.maxPullBytes });
    hasMore = page.length >= limit || page.cutByBytes === true;
    events = page;
  } catch (error) {
    throw storageFailure(ctx, 'read', 'storage failed to read events', error);
  }
  const checkpoint = events.length > 0 ? events[events.length - 1]!.seq : message.checkpoint;
  socket.data.checkpoint = checkpoint;
  if (Object.keys(ruled).length > 0) events = events.filter((event) => !ruled[event.collection] || matchesScope(ruled[event.collection]!, event.data));
  // Events the client already has from live messages, and those the user may not read, are left out;
  // the checkpoint still moves past them.
  if (message.have && message.have.length > 0) {
    const has = spanSet(message.have);
    events = events.filter((event) => !has(event.seq));
  }
  const visible = await readable(ctx, socket.data.user, events);
  ctx.emit('pull', { durationMs: performance.now() - started, events: visible.length });
  return { ...toPullPage(visible), checkpoint, hasMore, ...scopeReply(ruled) };
}

/** A pull of one collection in a scope: the changes the client lacks in it, and what left it (see getScopedChanges). */
async function scopedPull<User>(
  ctx: ServerContext<User>,
  socket: SyncSocket<User>,
  message: PullMessage & { scope: { want: unknown; held: unknown; through: number } },
  limit: number,
  started: number,
): Promise<PullPage> {
  if (message.collections.length !== 1) throw new SyncError('INVALID_MESSAGE', 'a scoped pull names exactly one collection', { collections: message.collections });
  const collection = message.collections[0]!;
  const scope = await effectiveScope(ctx, socket.data.user, collection, message.scope.want);
  const held = parseScope(message.scope.held, 'scope.held');
  // The first page of a catch-up from nothing: where it begins, read before the page so that every head
  // the catch-up sends is at or after it (see ScopedQuery.start).
  const first = message.checkpoint === 0 && message.scope.through === 0;
  let start = message.scope.through === 0 ? message.scope.start : undefined;
  let page: Awaited<ReturnType<SyncStorage['getScopedChanges']>>;
  try {
    if (first) start = await ctx.storage.getLatestSequence();
    page = await ctx.storage.getScopedChanges(message.checkpoint, {
      collection,
      scope,
      held: { scope: held, through: message.scope.through },
      ...(start !== undefined ? { start } : {}),
      limit,
      maxBytes: ctx.options.maxPullBytes,
    });
  } catch (error) {
    throw storageFailure(ctx, 'read', 'storage failed to read scoped changes', error);
  }
  const hasMore = page.length >= limit || page.cutByBytes === true;
  if (page.through < message.checkpoint) throw new SyncError('STORAGE_ERROR', `storage moved a scoped reader back from ${message.checkpoint} to ${page.through}`);
  socket.data.checkpoint = page.through;
  let rows: RemoteEvent[] = [];
  const leaves: [string, number][] = [];
  for (const change of page) {
    if (change.leave) leaves.push([change.documentId, change.seq]);
    else rows.push(change);
  }
  if (message.have && message.have.length > 0) {
    const has = spanSet(message.have);
    rows = rows.filter((event) => !has(event.seq));
  }
  const visible = await readable(ctx, socket.data.user, rows);
  // Live delivery follows the scope this pull found (the rule may have changed since the subscription).
  const current = socket.data.scopes?.[collection] ?? null;
  if (!sameScope(current, scope)) await followScope(socket, collection, scope);
  ctx.emit('pull', { durationMs: performance.now() - started, events: visible.length });
  return {
    ...toPullPage(visible),
    checkpoint: page.through,
    hasMore,
    scopes: { [collection]: toSelector(scope) },
    ...(leaves.length > 0 ? { leaves } : {}),
    ...(first && start !== undefined ? { start } : {}),
  };
}
