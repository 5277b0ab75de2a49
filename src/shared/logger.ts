import { z } from 'zod';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const loggingOptionsSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    level: z.enum(LOG_LEVELS).default('info'),
  })
  .default({ enabled: true, level: 'info' });
export type LoggingOptions = z.input<typeof loggingOptionsSchema>;

/** One log call, in pino's shape: a message, or fields and then a message. */
export interface LogFn {
  (message: string): void;
  (fields: object, message?: string): void;
}

/**
 * What both sides log through. It is pino's shape, so the server hands in a
 * pino logger (src/server/logger.ts) and the client this file's console
 * logger, which keeps the browser bundle free of a logging library.
 */
export interface Logger {
  fatal: LogFn;
  error: LogFn;
  warn: LogFn;
  info: LogFn;
  debug: LogFn;
  trace: LogFn;
  child(bindings: Record<string, unknown>): Logger;
}

const SEVERITY: Record<LogLevel, number> = { fatal: 60, error: 50, warn: 40, info: 30, debug: 20, trace: 10 };
const CONSOLE_METHOD = { fatal: 'error', error: 'error', warn: 'warn', info: 'info', debug: 'debug', trace: 'debug' } as const;
const noop = () => {};

function consoleLogger(options: z.output<typeof loggingOptionsSchema>, name: string, bindings: Record<string, unknown>): Logger {
  const method = (level: LogLevel): LogFn => {
    if (!options.enabled || SEVERITY[level] < SEVERITY[options.level]) return noop;
    return (first: string | object, message?: string) => {
      const fields = typeof first === 'string' ? bindings : { ...bindings, ...first };
      const text = `[${name}] ${typeof first === 'string' ? first : (message ?? '')}`;
      if (Object.keys(fields).length === 0) console[CONSOLE_METHOD[level]](text);
      else console[CONSOLE_METHOD[level]](text, fields);
    };
  };
  return {
    fatal: method('fatal'),
    error: method('error'),
    warn: method('warn'),
    info: method('info'),
    debug: method('debug'),
    trace: method('trace'),
    child: (more) => consoleLogger(options, name, { ...bindings, ...more }),
  };
}

/** A logger over `console`, with no dependency: the client's, in browsers and in Node alike. */
export function createLogger(options: z.output<typeof loggingOptionsSchema>, name: string): Logger {
  return consoleLogger(options, name, {});
}
