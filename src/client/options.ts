import { z } from 'zod';
import { loggingOptionsSchema } from '../shared/logger.js';
import { parseOptions } from '../shared/json.js';
import { collectionNameSchema } from '../shared/protocol/index.js';
import { parseScope, type ScopeSelector } from '../shared/scope.js';
import { STRATEGY_NAMES, type ConflictResolver, type StrategyName } from './strategies/types.js';

export type AuthToken = string | (() => string | undefined | null | Promise<string | undefined | null>);
export type ConflictResolution = StrategyName | ConflictResolver;

const strategySchema = z.union([
  z.enum(STRATEGY_NAMES),
  z.custom<ConflictResolver>((value) => typeof value === 'function', 'a strategy name or a function'),
]);

export const clientOptionsSchema = z.strictObject({
  serverUrl: z.string().url('serverUrl must be an absolute URL such as http://localhost:3000'),
  authToken: z
    .union([z.string(), z.custom<() => string>((value) => typeof value === 'function', 'a function')])
    .optional(),
  collections: z.array(collectionNameSchema).default([]),
  /**
   * Per collection, the documents this device holds (a selector: equality,
   * $in, $gt/$gte/$lt/$lte over top-level fields, $and); the server may
   * narrow it further. Change it at run time with setScope().
   */
  scopes: z
    .record(
      collectionNameSchema,
      z.unknown().superRefine((selector, context) => {
        try {
          parseScope(selector);
        } catch (error) {
          context.addIssue({ code: 'custom', message: (error as Error).message.replace(/^scope: /, '') });
        }
      }),
    )
    .default({}),
  /**
   * Per collection, when attachment content is downloaded: 'eager' (the
   * default) as soon as a version naming it arrives; 'lazy' when the app
   * asks for it (RxAttachment.getData()), except content of at most
   * `eagerBelowBytes`, which still comes at once. The document and its
   * attachments' metadata always arrive at once.
   */
  attachments: z
    .record(
      collectionNameSchema,
      z.strictObject({
        download: z.enum(['eager', 'lazy']).default('eager'),
        eagerBelowBytes: z.number().int().nonnegative().default(0),
      }),
    )
    .default({}),
  syncInterval: z.number().int().min(100, 'syncInterval is in milliseconds and at least 100').default(30_000),
  autoSync: z.boolean().default(true),
  useWebSockets: z.boolean().default(true),
  conflictResolution: z
    .union([strategySchema, z.record(collectionNameSchema, strategySchema)])
    .default('last-write-wins'),
  retry: z
    .strictObject({
      maxRetries: z.number().int().nonnegative().default(5),
      /** The first wait before connecting again or retrying, in ms; doubled per attempt when exponential. */
      retryDelay: z.number().int().positive().default(1000),
      /** The longest wait between attempts, in ms: a server or network that returns is found again within it. */
      maxDelay: z.number().int().positive().default(1000),
      useExponentialBackoff: z.boolean().default(true),
    })
    .default({ maxRetries: 5, retryDelay: 1000, maxDelay: 1000, useExponentialBackoff: true }),
  logging: loggingOptionsSchema,
  /** Events per push message. */
  batchSize: z.number().int().positive().max(5000).default(500),
  /** Events per pull page (the server caps it at its maxPullLimit, 5000 by default). */
  pullBatchSize: z.number().int().positive().max(5000).default(2000),
  /** Upper bound on one push message's size in bytes (JSON); keep it under the server's maxPayloadBytes. */
  maxBatchBytes: z.number().int().positive().default(1024 * 1024),
  /**
   * A connection from which nothing (not even the server's ping) arrived for
   * this long, in ms, is taken for dead: closed at once and made again. It
   * never goes under twice the server's heartbeatInterval, and it doubles
   * (up to 32 times) after it cut a request short, so that a message that
   * takes longer than this to cross a slow link still gets through.
   */
  heartbeatTimeout: z.number().int().min(1000).default(4500),
  /** How long to wait for the server to answer one message. */
  requestTimeout: z.number().int().positive().default(20_000),
  /** socket.io path on the server. */
  path: z.string().default('/socket.io'),
});

export type SyncPluginOptions = Omit<z.input<typeof clientOptionsSchema>, 'authToken' | 'conflictResolution' | 'scopes'> & {
  authToken?: AuthToken;
  scopes?: Record<string, ScopeSelector | null>;
  conflictResolution?: ConflictResolution | Record<string, ConflictResolution>;
};
export type ResolvedClientOptions = Omit<z.output<typeof clientOptionsSchema>, 'authToken' | 'conflictResolution' | 'scopes'> & {
  authToken?: AuthToken;
  scopes: Record<string, ScopeSelector | null>;
  conflictResolution: ConflictResolution | Record<string, ConflictResolution>;
};

export function resolveClientOptions(options: SyncPluginOptions): ResolvedClientOptions {
  return parseOptions(clientOptionsSchema, options, 'sync plugin') as ResolvedClientOptions;
}
