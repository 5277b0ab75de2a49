/**
 * `npm start`: builds the example todo app when its build is missing or older
 * than its sources, then runs `rxdb-offline-sync serve` with SQLite under
 * ./data, serving the app on the same port. Extra arguments go to the CLI:
 * `npm start -- --port 4000 --storage memory`.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { main } from '../src/cli/program.js';

const root = join(import.meta.dirname, '..');
const appRoot = join(root, 'examples', 'todo-app');
const outDir = join(appRoot, 'dist');
/** What the built app is made of: its own files and the plugin's sources. */
const sources = [join(appRoot, 'src'), join(appRoot, 'index.html'), join(appRoot, 'vite.config.ts'), join(root, 'src', 'client'), join(root, 'src', 'shared'), join(root, 'package-lock.json')];

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

const code = await main([process.argv[0]!, 'rxdb-offline-sync', 'serve', '--static', relative(process.cwd(), outDir) || '.', ...process.argv.slice(2)]);
if (code !== undefined) process.exitCode = code;
