/**
 * Another process's memory as Linux accounts it, read from /proc/<pid>/status:
 * VmRSS (resident now) sampled on a timer, and VmHWM (the kernel's own peak
 * of VmRSS, which no sample can miss), reset first through
 * /proc/<pid>/clear_refs so that it covers the span watched only.
 */
import { readFileSync, writeFileSync } from 'node:fs';

const mb = (kb: number) => kb / 1024;

/** VmRSS and VmHWM of process `pid`, in MB. */
export function processMemory(pid: number): { rssMb: number; hwmMb: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!match) throw new Error(`/proc/${pid}/status has no ${name}`);
    return mb(Number(match[1]));
  };
  return { rssMb: field('VmRSS'), hwmMb: field('VmHWM') };
}

/** Sets VmHWM back to the current VmRSS; false where the kernel does not let this process do it. */
function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export interface RssWatch {
  /** VmRSS when the watch began. */
  baselineMb: number;
  /** The highest VmRSS sampled from `since` (a performance.now() time) on, or over the whole watch. */
  peakSince(since?: number): number;
  /** Stops sampling; the peak is the higher of the sampled one and VmHWM (when it could be reset). */
  stop(): { baselineMb: number; sampledPeakMb: number; hwmMb?: number; peakMb: number; growthMb: number };
}

/** Samples process `pid`'s VmRSS every `intervalMs` until stopped. */
export function watchRss(pid: number, intervalMs = 10): RssWatch {
  const hwmReset = resetPeak(pid);
  const baselineMb = processMemory(pid).rssMb;
  const samples: { at: number; rssMb: number }[] = [{ at: performance.now(), rssMb: baselineMb }];
  const sample = () => {
    try {
      samples.push({ at: performance.now(), rssMb: processMemory(pid).rssMb });
    } catch {
      // The process is gone; the samples so far stand.
    }
  };
  const timer = setInterval(sample, intervalMs);
  const peakSince = (since = 0) => samples.reduce((peak, each) => (each.at >= since && each.rssMb > peak ? each.rssMb : peak), 0);
  return {
    baselineMb,
    peakSince,
    stop() {
      sample();
      clearInterval(timer);
      const sampledPeakMb = peakSince();
      const hwmMb = hwmReset ? processMemory(pid).hwmMb : undefined;
      const peakMb = Math.max(sampledPeakMb, hwmMb ?? 0);
      return { baselineMb, sampledPeakMb, ...(hwmMb !== undefined ? { hwmMb } : {}), peakMb, growthMb: peakMb - baselineMb };
    },
  };
}
