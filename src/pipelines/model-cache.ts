/**
 * glmtool's cache of converted models: `chat` and `bench --backend cpu` on a torch or
 * safetensors directory convert it once to ONNX under `<root>/onnx/<key>/`, keyed by the source
 * (sourceKey), and reuse it while the source is unchanged. Each entry carries glmtool-cache.json
 * (the source it came from), so `glmtool cache ls` can say what an entry is and whether it is
 * stale, and `glmtool cache clear` removes entries, never anything else. A conversion first
 * checks that the disk has room for it.
 */
import {createHash} from 'node:crypto'
import {existsSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, utimesSync, writeFileSync} from 'node:fs'
import {homedir} from 'node:os'
import {join, resolve} from 'node:path'
import {GlmtoolError} from '../errors.js'
import type {ArchId, ModelConfig} from '../models/index.js'
import {VERSION} from '../version.js'
import {isWeightFile} from './model-dir.js'
import {outputHeld} from './output-dir.js'

/** Where converted models are cached: $GLMTOOL_CACHE, else $XDG_CACHE_HOME/glmtool, else ~/.cache/glmtool. */
export function cacheRoot(): string {
  return process.env.GLMTOOL_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'glmtool')
}

const ENTRY_FILE = 'glmtool-cache.json'
/**
 * The conversion's format, part of every key: 2 = float16 checkpoints keep float16 weights,
 * resident in the session (export-onnx.ts residentF16); others float32; quantized checkpoints'
 * linears compute with int8 activations (cpu_compute int8). Entries of format 1
 * (everything float32, before it) get other keys, so they are never reused as format 2: they
 * list as stale and `cache clear --stale` removes them.
 */
export const CACHE_FORMAT = 2
const KEY_RE = /^[0-9a-f]{16}$/

/**
 * A key that changes whenever the source model changes: its absolute path and each file's
 * name, size and mtime, plus glmtool's version (a new exporter re-converts), the generation
 * (ChatGLM2-6B and ChatGLM3-6B read rope_ratio differently) and the cache format.
 */
export function sourceKey(dir: string, arch: ArchId): string {
  const h = createHash('sha256').update(resolve(dir)).update(VERSION).update(arch).update(`cache-format-${CACHE_FORMAT}`)
  for (const name of readdirSync(dir).sort()) {
    const st = statSync(join(dir, name))
    if (st.isFile()) h.update(`${name}:${st.size}:${st.mtimeMs}\n`)
  }
  return h.digest('hex').slice(0, 16)
}

/** The cache directory of `source`'s ONNX conversion. */
export function onnxCacheDir(source: string, arch: ArchId): string {
  return join(cacheRoot(), 'onnx', sourceKey(source, arch))
}

/**
 * Bytes the ONNX conversion of `source` will take: its weight files (float16 stays float16,
 * float32 float32), doubled where its config.json (`config`, already read) says neither
 * (bfloat16 becomes float32; an unstated dtype, or a quantized checkpoint, whose float16 scales
 * become float32, is counted the same way, to be safe), plus 2% for the graph and alignment.
 */
export function estimateOnnxBytes(source: string, config: ModelConfig): number {
  let weights = 0
  for (const name of readdirSync(source)) if (isWeightFile(name)) weights += statSync(join(source, name)).size
  const quantized = config.quantization_bit !== undefined && config.quantization_bit !== null
  const widen = !quantized && (config.torch_dtype === 'float16' || config.torch_dtype === 'float32') ? 1 : 2
  return Math.ceil(weights * widen * 1.02)
}

const gb = (n: number) => `${(n / 1e9).toFixed(n < 1e10 ? 2 : 1)} GB`

/** Free bytes for an unprivileged writer on the file system that holds `dir` (or its nearest existing parent). */
export function freeBytes(dir: string): number {
  let p = resolve(dir)
  while (!existsSync(p)) p = resolve(p, '..')
  const s = statfsSync(p)
  return s.bavail * s.bsize
}

/**
 * Refuse a conversion the disk cannot hold, before it starts: a one-line error naming the
 * cache directory, the bytes needed and free, and how to make room.
 */
export function assertCacheRoom(source: string, dir: string, need: number): void {
  const free = freeBytes(dir)
  // Keep 1% of the need (at least 256 MB) spare: a full disk breaks more than this run.
  const spare = Math.max(256e6, need * 0.01)
  if (free < need + spare) {
    throw new GlmtoolError('cache-no-space', `not enough free disk space for the ONNX conversion of ${source} in ${dir}: it needs about ${gb(need)}, ${gb(free)} are free; remove old conversions with \`glmtool cache clear\`, or set GLMTOOL_CACHE to a larger disk`)
  }
}

interface EntryRecord {
  glmtool: 'cache-entry'
  source: string
  arch: ArchId
  version: string
  created: string
}

/** Record what a new entry was converted from (after its conversion is whole). */
export function recordCacheEntry(dir: string, source: string, arch: ArchId): void {
  const rec: EntryRecord = {glmtool: 'cache-entry', source: resolve(source), arch, version: VERSION, created: new Date().toISOString()}
  writeFileSync(join(dir, ENTRY_FILE), JSON.stringify(rec, null, 2) + '\n')
}

/** Mark an entry used now (its record's mtime), so `cache ls` can show when each was last used. */
export function touchCacheEntry(dir: string): void {
  const f = join(dir, ENTRY_FILE)
  const now = new Date()
  try {
    utimesSync(existsSync(f) ? f : dir, now, now)
  } catch {
    // A read-only cache still serves; the last-used time is only informative.
  }
}

export interface CacheEntry {
  key: string
  dir: string
  bytes: number
  /** The model it was converted from; undefined where the entry has no record (older glmtool). */
  source?: string
  arch?: ArchId
  version?: string
  created?: string
  lastUsed: string
  /**
   * current: the source is there, unchanged; stale: it changed (or another glmtool version made
   * the entry), so it will not be used again; orphaned: the source is gone; unknown: no record.
   */
  state: 'current' | 'stale' | 'orphaned' | 'unknown'
}

function treeBytes(p: string): number {
  const st = statSync(p, {throwIfNoEntry: false})
  if (!st) return 0
  if (!st.isDirectory()) return st.size
  let n = 0
  for (const e of readdirSync(p)) n += treeBytes(join(p, e))
  return n
}

function readRecord(dir: string): EntryRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(join(dir, ENTRY_FILE), 'utf8')) as EntryRecord
    return r.glmtool === 'cache-entry' && typeof r.source === 'string' ? r : undefined
  } catch {
    return undefined
  }
}

/** Every entry of the ONNX cache, largest first. */
export function listCache(root = cacheRoot()): CacheEntry[] {
  const onnx = join(root, 'onnx')
  if (!existsSync(onnx)) return []
  const entries: CacheEntry[] = []
  for (const key of readdirSync(onnx)) {
    const dir = join(onnx, key)
    if (!KEY_RE.test(key) || !statSync(dir).isDirectory()) continue
    const rec = readRecord(dir)
    let state: CacheEntry['state'] = 'unknown'
    if (rec) {
      if (!existsSync(rec.source)) state = 'orphaned'
      else {
        try {
          state = sourceKey(rec.source, rec.arch) === key ? 'current' : 'stale'
        } catch {
          state = 'orphaned'
        }
      }
    }
    const used = statSync(existsSync(join(dir, ENTRY_FILE)) ? join(dir, ENTRY_FILE) : dir).mtime
    entries.push({key, dir, bytes: treeBytes(dir), ...(rec ? {source: rec.source, arch: rec.arch, version: rec.version, created: rec.created} : {}), lastUsed: used.toISOString(), state})
  }
  return entries.sort((a, b) => b.bytes - a.bytes)
}

export interface ClearResult {
  removed: CacheEntry[]
  /** Entries asked for but left: a live run holds their output lock (output-dir.ts). */
  busy: CacheEntry[]
  bytes: number
}

/**
 * Remove cache entries: those named by key (or a unique key prefix), or with `stale` the
 * stale, orphaned and unrecorded ones, or all. Only entry directories are touched.
 */
export function clearCache(opts: {keys?: readonly string[], stale?: boolean} = {}, root = cacheRoot()): ClearResult {
  const all = listCache(root)
  let chosen = all
  if (opts.keys?.length) {
    chosen = opts.keys.map(k => {
      const m = all.filter(e => e.key.startsWith(k))
      if (m.length !== 1) throw new GlmtoolError('cache-key', `${join(root, 'onnx')}: ${m.length ? `${k} matches ${m.length} entries` : `no cache entry ${k}`} (see \`glmtool cache ls\`)`)
      return m[0]
    })
  } else if (opts.stale) {
    chosen = all.filter(e => e.state !== 'current')
  }
  const removed: CacheEntry[] = []
  const held: CacheEntry[] = []
  for (const e of chosen) {
    if (outputHeld(e.dir)) {
      held.push(e)
      continue
    }
    rmSync(e.dir, {recursive: true, force: true})
    removed.push(e)
  }
  return {removed, busy: held, bytes: removed.reduce((a, e) => a + e.bytes, 0)}
}
