/** The terminal demo and the Node example run to the end and tell the story they promise. */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

function run(script: string, env: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CI: '1', NO_COLOR: '1', ...env } });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${script} did not finish in time:\n${output}`));
    }, 40_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

describe('examples', () => {
  it('npm run demo: an offline edit meets a conflict and last-write-wins settles it both ways', async () => {
    const { code, output } = await run('scripts/demo.ts');
    expect(output).toContain('server refused 1 event(s) as a conflict');
    expect(output).toContain('last-write-wins keeps "Buy milk and eggs" (mine is the later write');
    expect(output).toContain('last-write-wins keeps "Buy soy milk" (the server\'s is the later write');
    expect(output).toMatch(/Both devices agree again[^]*Alice {2}"Buy soy milk"[^]*Bob {4}"Buy soy milk"/);
    expect(code).toBe(0);
  }, 45_000);

  it('examples/node syncs a write to the server', async () => {
    const { code, output } = await run('examples/node/index.ts', { PORT: '0' });
    expect(output).toContain('synced: 1 events | pending: 0 | stored on the server: 1');
    expect(code).toBe(0);
  }, 45_000);
});
