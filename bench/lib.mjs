// Helpers the benchmark scripts share.
import {spawnSync} from 'node:child_process'
import {join} from 'node:path'

/** The repository root (bench/..). */
export const root = new URL('..', import.meta.url).pathname

/** Run the built CLI; throws with its stderr when it fails. Returns stdout. */
export function cli(args) {
  const r = spawnSync(process.execPath, [join(root, 'bin/run.js'), ...args], {encoding: 'utf8', maxBuffer: 1 << 26})
  if (r.status !== 0) throw new Error(`glmtool ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
