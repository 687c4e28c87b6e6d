/**
 * A model argument is a path, or a Hugging Face model id (`THUDM/chatglm2-6b`, optionally
 * `@<branch, tag or commit>`) that resolves through the local Hugging Face cache, laid out as
 * huggingface_hub writes it: <cache>/models--<org>--<name>/refs/<ref> holds a commit hash and
 * snapshots/<commit>/ the files (symlinks into blobs/). The cache is $HF_HUB_CACHE, else
 * $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub, as
 * huggingface_hub's constants. glmtool never downloads: an id that is not in the cache is a
 * clear error saying how to fetch it.
 *
 * Hand-written: no npm library reads the Hugging Face cache without also downloading
 * (@huggingface/hub's cache helpers scan it, but bring the Hub client along).
 */
import {existsSync, readFileSync, statSync} from 'node:fs'
import {homedir} from 'node:os'
import {basename, join} from 'node:path'
import {UsageError} from '../errors.js'

/** What --help says about model arguments. */
export const MODEL_ID_HELP = 'or a Hugging Face model id (THUDM/chatglm2-6b[@revision]) already in the local Hugging Face cache ($HF_HOME/hub; never downloaded)'

export interface ResolvedModel {
  /** The directory (or file) to read. */
  path: string
  /** The argument as given. */
  given: string
  /** Base for default output names: the path as given, or the repository name of an id (in the current directory). */
  outBase: string
  /** Set when the argument was a Hugging Face id. */
  hub?: {id: string, revision: string, commit: string}
}

const HUB_ID = /^([A-Za-z0-9][\w.-]*)\/([\w.-]+)(?:@([\w./-]+))?$/

export function huggingFaceCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE
  if (env.HF_HOME) return join(env.HF_HOME, 'hub')
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface', 'hub')
}

/** A path that exists is a path; otherwise something shaped like `org/name` is a Hub id. */
export function resolveModelArg(arg: string, env: NodeJS.ProcessEnv = process.env): ResolvedModel {
  const local = {path: arg, given: arg, outBase: arg.replace(/\/+$/, '')}
  if (existsSync(arg)) return local
  const m = HUB_ID.exec(arg)
  if (!m || m[1] === '.' || m[1] === '..') return local // the command reports the missing path as it always has
  const [, org, name, revision = 'main'] = m
  const cache = huggingFaceCache(env)
  const repo = join(cache, `models--${org}--${name}`)
  const fetch = `fetch it first, e.g. \`huggingface-cli download ${org}/${name}${revision === 'main' ? '' : ` --revision ${revision}`}\``
  if (!existsSync(repo)) {
    throw new UsageError(`${arg}: no such file or directory, and not in the Hugging Face cache (no ${repo}); glmtool never downloads: ${fetch}`)
  }
  let commit = revision
  const ref = join(repo, 'refs', revision)
  if (existsSync(ref) && statSync(ref).isFile()) commit = readFileSync(ref, 'utf8').trim()
  const snapshot = join(repo, 'snapshots', commit)
  if (!/^[\w.-]+$/.test(commit) || !existsSync(snapshot)) {
    throw new UsageError(`${arg}: revision ${revision} is not in the Hugging Face cache (${existsSync(ref) ? `${ref} names ${commit}, but there is no ${snapshot}` : `no ${ref} and no snapshot ${snapshot}`}); glmtool never downloads: ${fetch}`)
  }
  return {path: snapshot, given: arg, outBase: basename(name), hub: {id: `${org}/${name}`, revision, commit}}
}
