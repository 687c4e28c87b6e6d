import {spawnSync} from 'node:child_process'
import {existsSync} from 'node:fs'
import {join} from 'node:path'

export const ROOT = join(import.meta.dirname, '../..')

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Run the built CLI (`npm test` builds dist/ first) as a user would. */
export function glmtool(args: string[], opts: {input?: string, env?: Record<string, string>} = {}): CliResult {
  if (!existsSync(join(ROOT, 'dist/commands'))) throw new Error('dist/ is missing: run `npm run build` (npm test does it)')
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/run.js'), ...args], {
    cwd: ROOT, input: opts.input, encoding: 'utf8', env: {...process.env, ...opts.env}, maxBuffer: 64 * 1024 * 1024,
  })
  return {code: r.status, stdout: r.stdout, stderr: r.stderr}
}
