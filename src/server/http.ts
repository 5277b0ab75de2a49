/**
 * HTTP endpoints for operators: liveness, readiness and a health report for
 * load balancers and orchestrators, and Prometheus metrics.
 *
 *   GET /health/live   200 while the process serves HTTP
 *   GET /health/ready  200 when the server is started and storage answers, else 503
 *   GET /health        the HealthReport as JSON (200, or 503 when storage does not answer)
 *   GET /metrics       Prometheus text format
 */
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import { checkHealth, type HealthCheckOptions } from './health.js';
import { createSyncMetrics, type SyncMetrics, type SyncMetricsOptions } from './metrics.js';
import type { SyncServer } from './server.js';

export { checkHealth, type HealthReport, type HealthCheckOptions } from './health.js';
export { createSyncMetrics, type SyncMetrics, type SyncMetricsOptions } from './metrics.js';

export interface HealthAndMetricsOptions extends HealthCheckOptions {
  /** Where the health endpoints live; `/live` and `/ready` are added below it. Default `/health`. */
  healthPath?: string;
  /** Where Prometheus scrapes; false for no metrics endpoint. Default `/metrics`. */
  metricsPath?: string | false;
  metrics?: SyncMetricsOptions;
}

export interface HealthAndMetrics {
  /** Answers a request for one of its paths and returns true; returns false (and does nothing) for any other. */
  handle(req: IncomingMessage, res: ServerResponse): boolean;
  readonly metrics: SyncMetrics;
  /** Stops collecting; the endpoints stop answering. */
  close(): void;
}

function send(res: ServerResponse, status: number, body: string, contentType: string): void {
  res.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(res.req?.method === 'HEAD' ? undefined : body);
}

const sendJson = (res: ServerResponse, status: number, value: unknown) =>
  send(res, status, `${JSON.stringify(value)}\n`, 'application/json; charset=utf-8');

/** A request handler for the health and metrics endpoints, to mount in any HTTP stack (`handle(req, res) || next()`). */
export function createHealthAndMetrics(server: SyncServer<any>, options: HealthAndMetricsOptions = {}): HealthAndMetrics {
  const healthPath = (options.healthPath ?? '/health').replace(/\/+$/, '');
  const metricsPath = options.metricsPath === undefined ? '/metrics' : options.metricsPath;
  const metrics = createSyncMetrics(server, options.metrics);
  let closed = false;

  const routes = new Map<string, (res: ServerResponse) => Promise<void>>([
    [`${healthPath}/live`, async (res) => sendJson(res, 200, { status: 'ok' })],
    [
      `${healthPath}/ready`,
      async (res) => {
        const report = await checkHealth(server, options);
        sendJson(res, report.status === 'ok' ? 200 : 503, { status: report.status, ...(report.storage.error ? { error: report.storage.error } : {}) });
      },
    ],
    [
      healthPath,
      async (res) => {
        const report = await checkHealth(server, options);
        sendJson(res, report.status === 'ok' ? 200 : 503, report);
      },
    ],
  ]);
  if (metricsPath) routes.set(metricsPath, async (res) => send(res, 200, await metrics.render(), metrics.contentType));

  return {
    metrics,
    handle(req, res) {
      if (closed) return false;
      const path = new URL(req.url ?? '/', 'http://localhost').pathname;
      const route = routes.get(path.length > 1 ? path.replace(/\/+$/, '') : path);
      if (!route) return false;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('allow', 'GET, HEAD');
        sendJson(res, 405, { error: `${req.method} is not allowed on ${path}` });
        return true;
      }
      route(res).catch((error: unknown) => {
        if (!res.headersSent) sendJson(res, 500, { error: error instanceof Error ? error.message : String(error) });
        else res.destroy();
      });
      return true;
    },
    close() {
      closed = true;
      metrics.close();
    },
  };
}

/**
 * Serves the endpoints on `httpServer`, in front of whatever already answers
 * its requests (socket.io, an app), whichever was attached first.
 */
export function attachHealthAndMetrics(
  server: SyncServer<any>,
  httpServer: HttpServer,
  options: HealthAndMetricsOptions = {},
): HealthAndMetrics {
  const endpoints = createHealthAndMetrics(server, options);
  const previous = httpServer.listeners('request') as ((req: IncomingMessage, res: ServerResponse) => void)[];
  httpServer.removeAllListeners('request');
  httpServer.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (endpoints.handle(req, res)) return;
    for (const listener of previous) listener.call(httpServer, req, res);
  });
  return endpoints;
}
