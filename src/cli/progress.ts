import cliProgress from 'cli-progress'

/** Human-readable bytes: 1.2 GB, 340 MB (decimal units, as disk tools print them). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let v = n
  let u = 0
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000
    u++
  }
  return `${v >= 100 || u === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`
}

export interface Progress {
  add(bytes: number): void
  stop(): void
}

/**
 * A progress bar on stderr (bytes done, rate, ETA) for work that moves bytes. Shown only when
 * stderr is a terminal and output is not --json, so logs and pipes stay clean.
 */
export function byteProgress(label: string, totalBytes: number, enabled: boolean): Progress {
  if (!enabled || !process.stderr.isTTY) return {add() {}, stop() {}}
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: `${label} [{bar}] {percentage}% | {doneFmt} / {totalFmt} | {rateFmt}/s | ETA {eta_formatted}`,
    hideCursor: true,
    etaBuffer: 50,
    fps: 5,
  }, cliProgress.Presets.shades_classic)
  const start = Date.now()
  let done = 0
  bar.start(totalBytes, 0, {doneFmt: formatBytes(0), totalFmt: formatBytes(totalBytes), rateFmt: formatBytes(0)})
  return {
    add(bytes) {
      done += bytes
      const secs = Math.max(1e-3, (Date.now() - start) / 1000)
      bar.update(done, {doneFmt: formatBytes(done), rateFmt: formatBytes(done / secs)})
    },
    stop() {
      bar.stop()
    },
  }
}
