import {Command, Errors, Flags} from '@oclif/core'
import {GlmtoolError, InterruptedError} from '../errors.js'
import {ARCH_IDS, type ArchId} from '../models/index.js'
import {KV_DTYPES, type KvDtype} from '../runtime/backend.js'
import {type ResolvedModel, resolveModelArg} from './model-arg.js'

/**
 * The short flags, one meaning each across commands (README "Commands"): -o --out, -f --force,
 * -d --dtype, -b --backend, -p --prompt; -h is help everywhere (package.json oclif
 * additionalHelpFlags).
 */
export const FLAG_CHARS = {out: 'o', force: 'f', dtype: 'd', backend: 'b', prompt: 'p'} as const

/**
 * `--arch`, on every command that reads a model: which generation it is, where config.json and
 * tokenizer_config.json do not say (ChatGLM2-6B and ChatGLM3-6B share one network). It must run
 * the network config.json describes (src/models/index.ts detectArch).
 */
export const archFlag = () => Flags.string({
  options: [...ARCH_IDS],
  description: 'the model\'s generation, where config.json and tokenizer_config.json do not tell ChatGLM3-6B from ChatGLM2-6B [default: detected]',
})

/** --kv-dtype (chat, serve, bench): the KV cache's element type; int8 on the CUDA backend only. */
export const kvDtypeFlag = () => Flags.string({
  options: [...KV_DTYPES],
  default: 'f16',
  description: 'the KV cache: f16 the model\'s float type (float16 or bfloat16), int8 one byte a value with a scale per KV head and token (about half the memory; --backend cuda)',
})

/** The --kv-dtype value, typed. */
export function kvDtypeOf(flags: {'kv-dtype'?: string}): KvDtype {
  return (flags['kv-dtype'] ?? 'f16') as KvDtype
}

/** The --arch value, typed. */
export function archOf(flags: {arch?: string}): ArchId | undefined {
  return flags.arch as ArchId | undefined
}

/**
 * Every glmtool command: `--json` (oclif prints run()'s return value and nothing else on
 * stdout) and one error path that prints a single line naming the cause and exits non-zero.
 */
export abstract class BaseCommand extends Command {
  static override enableJsonFlag = true

  /**
   * A model argument: a path, or a Hugging Face id resolved through the local cache
   * (src/cli/model-arg.ts); says on stderr where an id resolved to.
   */
  protected resolveModel(arg: string): ResolvedModel {
    const r = resolveModelArg(arg)
    if (r.hub) this.note(`${arg}: ${r.path} (Hugging Face cache, ${r.hub.revision === r.hub.commit ? 'commit' : r.hub.revision} ${r.hub.commit})`)
    return r
  }

  /** Warnings go to stderr so stdout holds only results. */
  protected note(message: string): void {
    if (!this.jsonEnabled()) process.stderr.write(`${message}\n`)
  }

  protected override async catch(err: Error & {exitCode?: number, code?: string}): Promise<unknown> {
    const message = describeError(err)
    const exitCode = err instanceof InterruptedError ? err.exitCode : err instanceof GlmtoolError ? 1 : err instanceof Errors.CLIError ? (err.oclif?.exit ?? 2) : 1
    if (err instanceof Errors.ExitError) throw err
    if (this.jsonEnabled()) {
      process.stdout.write(JSON.stringify({error: {code: err instanceof GlmtoolError ? err.code : (err.code ?? 'error'), message}}) + '\n')
    }
    process.stderr.write(`glmtool: ${message}\n`)
    if (process.env.GLMTOOL_DEBUG && err.stack) process.stderr.write(`${err.stack}\n`)
    process.exitCode = exitCode
    return undefined
  }
}

/** One line, naming the cause; system errors get the path and a plain-words reason. */
export function describeError(err: Error & {code?: string, path?: string}): string {
  const plain: Record<string, string> = {
    ENOSPC: 'disk full',
    EACCES: 'permission denied',
    EROFS: 'read-only file system',
    ENOENT: 'no such file or directory',
    EISDIR: 'is a directory',
    ENOTDIR: 'not a directory',
    EMFILE: 'too many open files',
  }
  if (!(err instanceof GlmtoolError) && err.code && plain[err.code]) {
    return `${err.path ?? ''}${err.path ? ': ' : ''}${plain[err.code]} (${err.code})`
  }
  return err.message.replace(/\s*\n\s*/g, '; ').replace(/^Error: /, '')
}
