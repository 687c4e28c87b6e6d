/**
 * Interop between glmtool and the reference `safetensors` Python package
 * (test/crosscheck/safetensors_interop.py). Both sides describe the files they write in one
 * manifest format, so each can check the other's files:
 *
 *   manifest.json = {"files": {"<path relative to the manifest, posix>": {
 *       "metadata": {<string>: <string>} | null,
 *       "tensors": {"<name>": {"dtype": "F16", "shape": [2, 3], "sha256": "<hex of the
 *                               contiguous row-major little-endian bytes>"}}}}}
 */
import {createHash} from 'node:crypto'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import type {DType} from '../../src/formats/dtype.js'
import {DTYPE_SIZE} from '../../src/formats/dtype.js'
import {openSafetensors, openSafetensorsModel} from '../../src/formats/safetensors-reader.js'
import {writeSafetensorsFile, writeSafetensorsModel} from '../../src/formats/safetensors-writer.js'
import {memoryTensor, type TensorEntry} from '../../src/formats/tensor.js'

export interface ManifestTensor {dtype: string, shape: number[], sha256: string}
export interface ManifestFile {metadata: Record<string, string> | null, tensors: Record<string, ManifestTensor>}
export interface Manifest {files: Record<string, ManifestFile>}

export const ALL_DTYPES: DType[] = ['F16', 'BF16', 'F32', 'F64', 'I8', 'U8', 'I16', 'I32', 'I64', 'BOOL']

export async function sha256Tensor(t: TensorEntry): Promise<string> {
  const h = createHash('sha256')
  for await (const c of t.chunks(1 << 20)) h.update(c)
  return h.digest('hex')
}

/** xorshift32: deterministic bytes without a dependency. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    return x
  }
}

/** Bytes valid for the dtype: BOOL only 0/1; floats real values plus -0, inf and NaN. */
export function sampleBytes(dtype: DType, n: number, seed: number): Buffer {
  const next = prng(seed)
  const buf = Buffer.alloc(n * DTYPE_SIZE[dtype])
  const specials = [0, -0, 1, -1, Infinity, -Infinity, NaN, 65504, 1e-7]
  for (let i = 0; i < n; i++) {
    const r = next()
    const v = i < specials.length ? specials[i] : (r / 0xffffffff - 0.5) * 200
    switch (dtype) {
      case 'F32': buf.writeFloatLE(v, i * 4); break
      case 'F64': buf.writeDoubleLE(v, i * 8); break
      // f16/bf16 raw bit patterns; avoid NaN payloads other than from the specials list.
      case 'F16': buf.writeUInt16LE(r & 0x7bff, i * 2); break
      case 'BF16': buf.writeUInt16LE(r & 0x7f7f, i * 2); break
      case 'BOOL': buf[i] = r & 1; break
      case 'I8': case 'U8': buf[i] = r & 0xff; break
      case 'I16': buf.writeUInt16LE(r & 0xffff, i * 2); break
      case 'I32': buf.writeUInt32LE(r, i * 4); break
      case 'I64': buf.writeUInt32LE(r, i * 8); buf.writeUInt32LE(next(), i * 8 + 4); break
    }
  }
  return buf
}

/** Every dtype in a few shapes, including a 0-d scalar and a zero-size tensor. */
export function interopTensors(prefix = ''): TensorEntry[] {
  const out: TensorEntry[] = []
  ALL_DTYPES.forEach((dt, i) => {
    for (const [suffix, shape] of [['mat', [3, 5]], ['scalar', []], ['empty', [2, 0]]] as const) {
      const n = shape.reduce((a, b) => a * b, 1)
      out.push(memoryTensor(`${prefix}${dt.toLowerCase()}.${suffix}`, dt, shape, sampleBytes(dt, n, 1000 + i * 7 + suffix.length)))
    }
  })
  out.push(memoryTensor(`${prefix}big`, 'F32', [64, 33], sampleBytes('F32', 64 * 33, 7)))
  return out
}

async function describe(tensors: TensorEntry[], metadata: Record<string, string> | undefined): Promise<ManifestFile> {
  const entries: Record<string, ManifestTensor> = {}
  for (const t of tensors) entries[t.name] = {dtype: t.dtype, shape: [...t.shape], sha256: await sha256Tensor(t)}
  return {metadata: metadata ?? null, tensors: entries}
}

/**
 * Write glmtool's interop files into dir (created if missing) with their manifest.json, for
 * `python3 test/crosscheck/safetensors_interop.py check DIR`.
 */
export async function writeGlmtoolInteropFiles(dir: string): Promise<Manifest> {
  await mkdir(dir, {recursive: true})
  const manifest: Manifest = {files: {}}
  const metadata = {format: 'pt', source: 'glmtool interop test', 'unicode-ключ': 'значение ✓'}

  const all = interopTensors()
  await writeSafetensorsFile(join(dir, 'glmtool_all_dtypes.safetensors'), all, metadata)
  manifest.files['glmtool_all_dtypes.safetensors'] = await describe(all, metadata)

  const plain = interopTensors('plain.').slice(0, 6)
  await writeSafetensorsFile(join(dir, 'glmtool_no_metadata.safetensors'), plain)
  manifest.files['glmtool_no_metadata.safetensors'] = await describe(plain, undefined)

  const sharded = interopTensors('layers.')
  const shardDir = join(dir, 'glmtool_sharded')
  await mkdir(shardDir, {recursive: true})
  const written = await writeSafetensorsModel(shardDir, sharded, {maxShardBytes: 4096, metadata: {format: 'pt'}})
  for (const s of written.shards) manifest.files[`glmtool_sharded/${s.file}`] = await describe(s.tensors, {format: 'pt'})

  await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n')
  return manifest
}

function sameMetadata(a: Record<string, string> | undefined, b: Record<string, string> | null): boolean {
  if (a === undefined || b === null) return a === undefined && b === null
  const ka = Object.keys(a).sort()
  const kb = Object.keys(b).sort()
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k])
}

/**
 * Read every file dir/manifest.json lists with glmtool's reader and compare; returns the
 * mismatches (empty when all agree). Also opens every directory holding an index as a model.
 */
export async function checkAgainstManifest(dir: string): Promise<string[]> {
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest
  const problems: string[] = []
  const modelDirs = new Set<string>()
  for (const [rel, want] of Object.entries(manifest.files)) {
    const f = await openSafetensors(join(dir, rel))
    if (!sameMetadata(f.metadata, want.metadata)) problems.push(`${rel}: metadata ${JSON.stringify(f.metadata)} != ${JSON.stringify(want.metadata)}`)
    const got = new Map(f.tensors.map(t => [t.name, t]))
    for (const name of Object.keys(want.tensors)) if (!got.has(name)) problems.push(`${rel}: missing tensor ${name}`)
    for (const [name, t] of got) {
      const w = want.tensors[name]
      if (!w) { problems.push(`${rel}: unexpected tensor ${name}`); continue }
      if (t.dtype !== w.dtype) problems.push(`${rel}: ${name} dtype ${t.dtype} != ${w.dtype}`)
      if (JSON.stringify(t.shape) !== JSON.stringify(w.shape)) problems.push(`${rel}: ${name} shape ${JSON.stringify(t.shape)} != ${JSON.stringify(w.shape)}`)
      const sha = await sha256Tensor(t)
      if (sha !== w.sha256) problems.push(`${rel}: ${name} sha256 ${sha} != ${w.sha256}`)
    }
    if (rel.includes('/')) modelDirs.add(rel.slice(0, rel.lastIndexOf('/')))
  }
  for (const d of modelDirs) {
    const m = await openSafetensorsModel(join(dir, d)).catch((e: Error) => e)
    if (m instanceof Error) { problems.push(`${d}: ${m.message}`); continue }
    const listed = Object.entries(manifest.files).filter(([rel]) => rel.startsWith(`${d}/`)).flatMap(([, f]) => Object.keys(f.tensors)).sort()
    const names = m.tensors.map(t => t.name).sort()
    if (JSON.stringify(names) !== JSON.stringify(listed)) problems.push(`${d}: model tensors ${names.length} != manifest's ${listed.length}`)
  }
  return problems
}
