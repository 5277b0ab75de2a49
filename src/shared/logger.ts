import { pino, type Logger } from 'pino';
import { z } from 'zod';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;

export const loggingOptionsSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    level: z.enum(LOG_LEVELS).default('info'),
  })
  .default({ enabled: true, level: 'info' });
export type LoggingOptions = z.input<typeof loggingOptionsSchema>;

export type { Logger };

export function createLogger(options: z.output<typeof loggingOptionsSchema>, name: string): Logger {
  return pino({ name, enabled: options.enabled, level: options.level });
}
