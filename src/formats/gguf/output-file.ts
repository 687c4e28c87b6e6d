import {existsSync, statSync} from 'node:fs'
import {mkdir, open, rename, rm, type FileHandle} from 'node:fs/promises'
import {basename, dirname, join, resolve} from 'node:path'
import {UsageError} from '../../errors.js'

/**
 * The single-file counterpart of writeOutputDir (output-dir.ts), for `--out x.gguf`: the file
 * is written as a temporary file beside the target (same filesystem, so the rename is atomic),
 * synced, and renamed into place only when `build` has finished; on failure or Ctrl-C/SIGTERM
 * the temporary file is removed. An existing target is replaced only with `force`.
 * (Kept here rather than in output-dir.ts, which another branch is changing; the lead may
 * move it there.)
 */
export async function writeOutputFile<T>(target: string, force: boolean, build: (fh: FileHandle) => Promise<T>): Promise<T> {
  const out = resolve(target)
  if (existsSync(out)) {
    if (!force) throw new UsageError(`output ${target} already exists; pass --force to replace it`)
    if (!statSync(out).isFile()) throw new UsageError(`output ${target} exists and is not a file`)
  }
  await mkdir(dirname(out), {recursive: true})
  const tmp = join(dirname(out), `.${basename(out)}.glmtool-tmp-${process.pid}-${Date.now().toString(36)}`)
  const fh = await open(tmp, 'wx')
  let closed = false
  const cleanup = async () => {
    if (!closed) await fh.close().catch(() => undefined)
    closed = true
    await rm(tmp, {force: true})
  }
  const onSignal = (signal: NodeJS.Signals) => {
    void cleanup().finally(() => {
      process.stderr.write(`\nglmtool: interrupted (${signal}); removed the partial output, ${target} was not written\n`)
      process.exit(signal === 'SIGINT' ? 130 : 143)
    })
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    const result = await build(fh)
    await fh.sync()
    await fh.close()
    closed = true
    await rename(tmp, out)
    return result
  } catch (error) {
    await cleanup()
    throw error
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
