import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);

/** Log lines (pino JSON) a server prints while it starts and stops with these logging options. */
async function logLines(logging: object): Promise<{ level: number; msg: string }[]> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'test/fixtures/logging.ts', JSON.stringify(logging)], { timeout: 30_000 });
  return stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

describe('logging options', () => {
  it('level info prints info lines, level warn none below warn, enabled: false nothing', async () => {
    const [info, warn, off] = await Promise.all([logLines({ level: 'info' }), logLines({ level: 'warn' }), logLines({ enabled: false })]);
    expect(info.map((line) => line.msg)).toEqual(expect.arrayContaining(['sync server started', 'sync server stopped']));
    expect(warn.every((line) => line.level >= 40)).toBe(true);
    expect(off).toEqual([]);
  }, 60_000);
});
