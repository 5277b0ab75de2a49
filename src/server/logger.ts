/** The server logs through pino: JSON lines an operator's log pipeline reads. */
import { pino } from 'pino';
import type { z } from 'zod';
import type { Logger, loggingOptionsSchema } from '../shared/logger.js';

export type { Logger };

export function createLogger(options: z.output<typeof loggingOptionsSchema>, name: string): Logger {
  return pino({ name, enabled: options.enabled, level: options.level });
}
