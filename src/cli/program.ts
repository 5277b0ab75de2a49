/** The `rxdb-offline-sync` command line. Exit codes: 0 done, 1 failed while running, 2 bad arguments. */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { describeStorage, parseBytes, parseCorsOrigin, parsePort, parseRedisUrl, parseStorage, parseWorkers, type StorageSpec } from './args.js';
import type { CliLogLevel, RunningServer, ServeOptions } from './serve.js';

export const EXIT_USAGE = 2;
const LOG_LEVELS: CliLogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

interface ServeFlags {
  port: number;
  host: string;
  storage: StorageSpec;
  redis?: string;
  logLevel: CliLogLevel;
  static?: string;
  corsOrigin?: string | string[];
  authToken?: string;
  workers: number;
  maxAttachmentBytes: number;
  attachmentQuota?: number;
}

class UsageError extends Error {}

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Called with the running server, e.g. to install signal handlers; the default waits for SIGINT/SIGTERM. */
  onStarted?: (server: RunningServer) => void;
  /** What only code can give `serve` (an app's sign-in and the routes it needs), e.g. `npm start`'s demo; one process only. */
  serveWith?: Pick<ServeOptions, 'authenticate' | 'authorize' | 'handleRequest'>;
  /** Said on the web app's line in place of where it is served from. */
  webAppNote?: string;
}

export const defaultIo: CliIo = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

export function createProgram(io: CliIo = defaultIo): Command {
  const program = new Command('rxdb-offline-sync')
    .description('Offline-first sync server for RxDB apps (socket.io, with SQLite, PostgreSQL or memory storage).')
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('serve')
    .description('Start the sync server. Health at /health, Prometheus metrics at /metrics.')
    .addOption(new Option('-p, --port <port>', 'port to listen on (0: any free port)').default(3000).env('PORT').argParser(parsePort))
    .addOption(new Option('--host <host>', 'interface to listen on').default('0.0.0.0').env('HOST'))
    .addOption(
      new Option('-s, --storage <storage>', 'where events are stored: memory | sqlite:PATH | postgres://user:pass@host:5432/db')
        .default(parseStorage('sqlite:./data/sync.db'), 'sqlite:./data/sync.db')
        .env('SYNC_STORAGE')
        .argParser(parseStorage),
    )
    .addOption(new Option('--redis <url>', 'Redis URL for the socket.io adapter, to run several instances behind a load balancer').env('REDIS_URL').argParser(parseRedisUrl))
    .addOption(new Option('-l, --log-level <level>', 'log level').choices(LOG_LEVELS).default('info').env('LOG_LEVEL'))
    .addOption(new Option('--static <dir>', 'also serve a built web app (a folder with index.html) on the same port'))
    .addOption(new Option('--cors-origin <origins>', 'allow socket.io connections from these origins ("*" or a comma-separated list)').argParser(parseCorsOrigin))
    .addOption(new Option('--auth-token <token>', 'accept only clients that present this token (authToken on the client)').env('SYNC_AUTH_TOKEN'))
    .addOption(
      new Option('--max-attachment-bytes <size>', 'the largest attachment taken, e.g. 20MiB; larger ones are refused')
        .default(100 * 2 ** 20, '100MiB')
        .env('SYNC_MAX_ATTACHMENT_BYTES')
        .argParser(parseBytes),
    )
    .addOption(
      new Option('--attachment-quota <size>', 'the attachments each user may store, e.g. 1GiB; default: no quota. With --auth-token all clients are one user; without, each client is its own')
        .env('SYNC_ATTACHMENT_QUOTA')
        .argParser(parseBytes),
    )
    .addOption(
      new Option('-w, --workers <n>', 'server processes sharing the port, e.g. one per core ("auto"); needs sqlite or postgres storage')
        .default(1)
        .env('SYNC_WORKERS')
        .argParser(parseWorkers),
    )
    .action(async (flags: ServeFlags) => {
      if (flags.static && !existsSync(join(flags.static, 'index.html'))) {
        throw new UsageError(`--static ${flags.static}: no index.html in ${resolve(flags.static)} (build the app first)`);
      }
      if (flags.workers > 1 && io.serveWith) {
        throw new UsageError('--workers runs the plain CLI server; this one adds code of its own (a sign-in) that runs in one process');
      }
      if (flags.workers > 1 && flags.storage.kind === 'memory') {
        throw new UsageError('--workers needs storage the workers share (sqlite:PATH or postgres://...): with memory storage each worker would hold its own data');
      }
      // Loaded only now, so that --help and bad arguments answer without loading database drivers.
      const { serve } = await import('./serve.js');
      const cluster = await import('./cluster.js');
      const options = {
        port: flags.port,
        host: flags.host,
        storage: flags.storage,
        ...(flags.redis ? { redis: flags.redis } : {}),
        logLevel: flags.logLevel,
        ...(flags.static ? { staticDir: flags.static } : {}),
        ...(flags.corsOrigin ? { corsOrigin: flags.corsOrigin } : {}),
        ...(flags.authToken ? { authToken: flags.authToken } : {}),
        maxAttachmentBytes: flags.maxAttachmentBytes,
        ...(flags.attachmentQuota !== undefined ? { attachmentQuota: flags.attachmentQuota } : {}),
        ...io.serveWith,
      };
      if (cluster.isClusterWorker()) {
        // A worker of `--workers`: it serves what the primary hands it, and says so only to the primary.
        try {
          stopOnSignals(await serve({ ...options, clusterWorker: true }));
        } catch (error) {
          cluster.reportToPrimary({ type: 'rxos:failed', message: error instanceof Error ? error.message : String(error) });
          throw error;
        }
        return;
      }
      let server: RunningServer;
      try {
        server = flags.workers > 1 ? await cluster.servePrimary(options, flags.workers) : await serve(options);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
          throw new Error(`port ${flags.port} is already in use; choose another with --port`);
        }
        throw error;
      }
      io.stdout(
        [
          `rxdb-offline-sync is listening on ${server.url}`,
          `  storage: ${describeStorage(flags.storage)}${flags.redis ? `, Redis adapter ${new URL(flags.redis).host}` : ''}`,
          flags.workers > 1 ? `  workers: ${flags.workers} processes` : undefined,
          flags.static ? `  web app: ${server.url}/  (${io.webAppNote ?? `from ${flags.static}`})` : undefined,
          `  health:  ${server.url}/health   metrics: ${server.url}/metrics`,
          '',
        ]
          .filter((line) => line !== undefined)
          .join('\n'),
      );
      (io.onStarted ?? stopOnSignals)(server);
    });

  return program;
}

/** Graceful shutdown on SIGINT/SIGTERM; a second signal exits at once. */
export function stopOnSignals(server: RunningServer): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      server.logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    server.logger.info({ signal }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        server.logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

/** Runs the command line; resolves to an exit code when the command is done or failed (a running server keeps the process alive). */
export async function main(argv: string[], io: CliIo = defaultIo): Promise<number | undefined> {
  const program = createProgram(io);
  if (argv.length <= 2) {
    io.stderr(program.helpInformation());
    return EXIT_USAGE;
  }
  try {
    await program.parseAsync(argv);
    return undefined;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version end with exit code 0; every parse error is a usage error.
      return error.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    if (error instanceof UsageError) {
      io.stderr(`error: ${error.message}\n`);
      return EXIT_USAGE;
    }
    io.stderr(`error: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}
