/**
 * `npm start`: builds the example todo app when its build is missing or older
 * than its sources, then runs `rxdb-offline-sync serve` with SQLite under
 * ./data, serving the app on the same port, with the app's demo sign-in
 * (POST /demo/login, signed tokens, per-list access). Extra arguments go to
 * the CLI: `npm start -- --port 4000 --storage memory`.
 *
 * A signal to this process or to tsx (which relays it) shuts the server down
 * gracefully. One sent to npm alone reaches us only if the shell npm runs the
 * script line in passes it on, and dash (Debian's sh) does not: it dies of
 * SIGTERM without forwarding it, and holds SIGINT until its child ends. So the
 * server also stops when the npm process that started it, or anything between
 * it and us, is gone.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { defaultIo, main } from '../src/cli/program.js';
import { createDemoAuth } from '../examples/todo-app/server/demo-auth.js';

/** A process as /proc shows it; the start time tells a process from a later one that reuses its pid. */
interface ProcessRecord {
  pid: number;
  ppid: number;
  startTime: string;
}

function readProcess(pid: number): ProcessRecord | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name in parentheses may hold spaces and parentheses; the fields after the last ')' are fixed.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined; // dead, not yet reaped
    return { pid, ppid: Number(fields[1]), startTime: fields[19]! };
  } catch {
    return undefined;
  }
}

function environmentOf(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/**
 * The processes from our parent up to the package manager that ran this
 * script: npm gives every process it starts for a script the script's
 * command as npm_lifecycle_script, so the first ancestor without it is npm.
 * Empty when npm did not start us or /proc cannot tell (not Linux).
 */
function launchChain(): ProcessRecord[] {
  const script = process.env.npm_lifecycle_script;
  if (script === undefined) return [];
  const marker = `npm_lifecycle_script=${script}`;
  const chain: ProcessRecord[] = [];
  for (let pid = process.ppid; pid > 1 && chain.length < 8; ) {
    const record = readProcess(pid);
    if (!record) return [];
    chain.push(record);
    if (!environmentOf(pid).includes(marker)) return chain;
    pid = record.ppid;
  }
  return [];
}

/** Treats the end of any process in the chain as a SIGTERM, so the server shuts down as it does on one. */
function stopWhenLauncherGoes(chain: ProcessRecord[]): void {
  if (chain.length === 0) return;
  const timer = setInterval(() => {
    const gone = chain.find((expected) => readProcess(expected.pid)?.startTime !== expected.startTime);
    if (!gone) return;
    clearInterval(timer);
    console.error(`npm start: npm, or a process between it and this server (pid ${gone.pid}), is gone; shutting down`);
    process.kill(process.pid, 'SIGTERM');
  }, 250);
  timer.unref(); // never what keeps the process alive
}

stopWhenLauncherGoes(launchChain());

const root = join(import.meta.dirname, '..');
const appRoot = join(root, 'examples', 'todo-app');
const outDir = join(appRoot, 'dist');
/** What the built app is made of: its own files and the plugin's sources. */
const sources = [join(appRoot, 'src'), join(appRoot, 'public'), join(appRoot, 'index.html'), join(appRoot, 'vite.config.ts'), join(root, 'src', 'client'), join(root, 'src', 'shared'), join(root, 'package-lock.json')];

function newestChange(path: string): number {
  const stats = statSync(path, { throwIfNoEntry: false });
  if (!stats) return 0;
  if (!stats.isDirectory()) return stats.mtimeMs;
  return Math.max(stats.mtimeMs, ...readdirSync(path).map((name) => newestChange(join(path, name))));
}

const builtAt = statSync(join(outDir, 'index.html'), { throwIfNoEntry: false })?.mtimeMs ?? 0;
if (builtAt < Math.max(...sources.map(newestChange))) {
  console.log(`Building the example app into ${relative(process.cwd(), outDir)} ...`);
  const { build } = await import('vite');
  await build({ root: appRoot, configFile: join(appRoot, 'vite.config.ts'), logLevel: 'warn' });
}

const auth = createDemoAuth({ ...(process.env.DEMO_AUTH_SECRET ? { secret: process.env.DEMO_AUTH_SECRET } : {}) });
const code = await main([process.argv[0]!, 'rxdb-offline-sync', 'serve', '--static', relative(process.cwd(), outDir) || '.', ...process.argv.slice(2)], {
  ...defaultIo,
  // The demo's sign-in: its authenticate, its authorize and its login endpoint.
  serveWith: { authenticate: auth.authenticate, authorize: auth.authorize, handleRequest: auth.handleRequest },
  webAppNote: 'demo users: ana, ben',
});
if (code !== undefined) process.exitCode = code;
