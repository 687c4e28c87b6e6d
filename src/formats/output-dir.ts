import {existsSync} from 'node:fs'
import {mkdir, rename, rm} from 'node:fs/promises'
import {basename, dirname, join, resolve} from 'node:path'
import {UsageError} from '../errors.js'

/**
 * Write a model directory so that it appears whole or not at all: everything goes into a
 * temporary directory beside the target (same filesystem, so the final rename is atomic), and
 * only when `build` has finished, and verified, is it renamed into place. On failure or on
 * Ctrl-C/SIGTERM the temporary directory is removed; an existing target is only replaced with
 * `force`, and then only after the new one is complete.
 */
export async function writeOutputDir<T>(target: string, force: boolean, build: (tmpDir: string) => Promise<T>): Promise<T> {
  const out = resolve(target)
  if (existsSync(out) && !force) throw new UsageError(`output ${target} already exists; pass --force to replace it`)
  const parent = dirname(out)
  await mkdir(parent, {recursive: true})
  const tmp = join(parent, `.${basename(out)}.glmtool-tmp-${process.pid}-${Date.now().toString(36)}`)
  await mkdir(tmp)
  const cleanup = () => rm(tmp, {recursive: true, force: true})
  const onSignal = (signal: NodeJS.Signals) => {
    // Synchronous best effort: the process is about to exit.
    void cleanup().finally(() => {
      process.stderr.write(`\nglmtool: interrupted (${signal}); removed the partial output, ${target} was not written\n`)
      process.exit(signal === 'SIGINT' ? 130 : 143)
    })
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    const result = await build(tmp)
    if (existsSync(out)) {
      const old = `${tmp}.old`
      await rename(out, old)
      await rename(tmp, out)
      await rm(old, {recursive: true, force: true})
    } else {
      await rename(tmp, out)
    }
    return result
  } catch (error) {
    await cleanup()
    throw error
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
