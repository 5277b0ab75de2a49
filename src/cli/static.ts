/**
 * Serves a built web app (a Vite `dist/` folder) from the sync server's port:
 * files as they are, and index.html for any other path a browser navigates
 * to, so that client-side routes survive a reload. A missing file that is
 * not a page (a script, an image) is a 404, never index.html: a browser
 * would otherwise run HTML as a script and fail without saying why.
 */
import { createReadStream, statSync, type Stats } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, join, resolve, sep } from 'node:path';

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.wasm': 'application/wasm',
  '.woff2': 'font/woff2',
};

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => boolean;

function fileAt(path: string): Stats | undefined {
  try {
    const stats = statSync(path);
    return stats.isFile() ? stats : undefined;
  } catch {
    return undefined;
  }
}

/** A request for a page: a path without an extension, or one the browser asks for as HTML (/notes/v1.2). */
function isNavigation(req: IncomingMessage, pathname: string): boolean {
  if (extname(pathname) === '') return true;
  return req.headers['sec-fetch-dest'] === 'document' || (req.headers.accept ?? '').split(',')[0]?.trim() === 'text/html';
}

/** Throws when `dir` has no index.html, so that a wrong --static fails at startup, not on the first visit. */
export function createStaticHandler(dir: string): RequestHandler {
  const root = resolve(dir);
  const index = join(root, 'index.html');
  if (!fileAt(index)) throw new Error(`--static ${dir}: no index.html in ${root} (build the app first)`);

  return (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    let pathname: string;
    try {
      pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://localhost').pathname);
    } catch {
      return false;
    }
    const candidate = resolve(root, `.${pathname}`);
    // Never serve outside the folder (`/../`, encoded or not).
    if (candidate !== root && !candidate.startsWith(root + sep)) return false;
    let path = candidate;
    let stats = fileAt(path);
    if (!stats && isNavigation(req, pathname)) {
      path = index;
      stats = fileAt(path);
    }
    if (!stats) return false;
    const hashed = pathname.startsWith('/assets/');
    res.writeHead(200, {
      'content-type': CONTENT_TYPES[extname(path)] ?? 'application/octet-stream',
      'content-length': stats.size,
      // Vite puts content hashes in the names under assets/; everything else may change on the next build.
      'cache-control': hashed ? 'public, max-age=31536000, immutable' : 'no-cache',
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(path).pipe(res);
    return true;
  };
}
