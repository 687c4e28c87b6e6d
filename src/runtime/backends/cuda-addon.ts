/**
 * The CUDA engine's native addon (native/): everything it exports, typed in one place, and the
 * one loader that finds it and says plainly why the CUDA backend cannot run when it cannot
 * (node-llama-cpp's AddonTypes + getLlama habit, STYLE.md). The addon is optional: glmtool
 * installs, builds and runs on the CPU without it.
 *
 * Where it comes from: the npm package ships a prebuilt addon for linux-x64
 * (prebuilds/linux-x64/glmtool_cuda.node, built by `npm pack`'s prepack step), loaded first;
 * the fallback is one built from source (`node native/build.mjs`, `npm run build:native` in a
 * checkout; the sources and the script are in the package) into build/native/glmtool_cuda.node.
 */
import {existsSync} from 'node:fs'
import {createRequire} from 'node:module'
import {join, relative, resolve} from 'node:path'
import {GlmtoolError} from '../../errors.js'
import type {EngineDims, EngineFlags} from '../../models/arch.js'
import type {DeviceSampling} from '../backend.js'

/** What `probe()` reports about the driver, the GPU and cuBLAS. */
export interface CudaProbe {
  /** True when the engine can run: driver, a GPU of compute capability >= 8.0, and cuBLAS 13. */
  ok: boolean
  /** Why not, when !ok: the first of driver, GPU, cuBLAS that is missing. */
  reason: string
  name: string
  computeCapability: string
  multiprocessors: number
  totalMemory: number
  freeMemory: number
  l2Bytes: number
  /** Bytes/s from the memory clock and bus width (the datasheet's peak). */
  peakBandwidth: number
  driverVersion: number
  runtimeVersion: number
  cublasPath: string
  cublasVersion: number
}

/** Weight slots of the engine (native/engine.h WeightKind); per-layer kinds take a layer index. */
export const WEIGHT_KINDS = {
  W_QKV: 0, B_QKV: 1, W_DENSE: 2, B_DENSE: 3, W_UP: 4, B_UP: 5, W_DOWN: 6, B_DOWN: 7, W_LN1: 8, B_LN1: 9,
  W_LN2: 10, B_LN2: 11, W_FINAL: 12, B_FINAL: 13, W_LMHEAD: 14, W_EMBED: 15, PREFIX_K: 16, PREFIX_V: 17,
  /** Quantized models: the fp16 weight_scale of W_QKV, W_DENSE, W_UP, W_DOWN. */
  S_QKV: 18, S_DENSE: 19, S_UP: 20, S_DOWN: 21,
} as const
export type WeightKindName = keyof typeof WEIGHT_KINDS

/**
 * The engine's configuration: sizes, and the decoder's feature flags (the generation module's
 * engineFlags, src/models/arch.ts EngineFlags), never a generation number.
 */
export interface CudaEngineConfig extends EngineFlags, Omit<EngineDims, 'maxPositions'> {
  /** 0: float16, 1: bfloat16 (weights, activations and KV cache). */
  dtype: 0 | 1
  /** Tokens the KV cache holds (allocated up front). */
  maxLength: number
  /** P-Tuning v2 prefix entries kept in front of the cache. */
  prefixLength: number
  /** Capture the decode step once as a CUDA graph and replay it (default true). */
  useGraph?: boolean
  /**
   * Weight-only quantization of the four per-layer linears: 0 / absent none, 8 int8 [rows, K],
   * 4 packed int4 [rows, K/2] (column 2j in the high nibble), W ~ q * scale (fp16 scales).
   */
  quantBits?: 0 | 4 | 8
  /** Input columns per scale; 0 one scale per output row (the published layout). */
  groupSize?: number
  /** The KV cache: 0 / absent the model's float type, 1 int8 with a float32 scale per KV group and token (native/kv_int8.cuh). */
  kvDtype?: 0 | 1
}

/**
 * Next-token choice on the GPU (src/runtime/sampling.ts's rules, without repetition penalty):
 * the backend interface's DeviceSampling, passed to the addon as is (vocabLimit 0 = all rows).
 */
export type CudaSampling = DeviceSampling

export interface CudaMemoryStats {
  /** Bytes this engine holds through cudaMalloc, now and at most. */
  allocated: number
  peakAllocated: number
  /** total - free per cudaMemGetInfo (CUDA context, cuBLAS and anything else on the GPU), now and the largest seen. */
  deviceUsed: number
  peakDeviceUsed: number
  deviceTotal: number
  /** Weights on the GPU (all but the embedding table, which stays in host memory). */
  weightBytes: number
  hostEmbeddingBytes: number
  kvCacheBytes: number
  kvBytesPerToken: number
  /** Quantized models: the prefill's buffer for one dequantized weight (0 until the first prefill). */
  scratchBytes: number
  /** INT8 KV cache: the prefill attention's float copy of one layer's visible keys and values (0 otherwise). */
  kvStageBytes: number
}

export type LogitsMode = 0 | 1 | 2

export interface CudaEngineInfo {
  /** Most tokens one forward() call takes. */
  maxChunk: number
  /** Pieces the decode attention splits the KV length into. */
  decodeSplits: number
  /** Query heads per block of the decode attention; 0 when each block computes one head (GLMTOOL_CUDA_ATTN=head). */
  decodeHeadsPerBlock: number
  /** Whether the decode step's norms are fused into its GEMVs (GLMTOOL_CUDA_NORM=fused|kernel). */
  decodeFusedNorm: boolean
  /** The prefill attention: 0 cuBLAS scores + masked softmax; 1 or 2 the flash kernel with that many 16-row query tiles a warp (GLMTOOL_CUDA_FLASH). Absent from an addon built before it. */
  prefillFlash?: number
  /** Whether a decode step graph (per-step or decodeMany) has been captured. */
  graphCaptured: boolean
  /** Whether decode kernels launch with programmatic dependent launch. */
  pdl: boolean
}

export interface CudaEngine {
  /** Bytes a weight slot holds; 0 when this configuration has no such slot. */
  slotBytes(kind: number, layer: number): number
  /** Copy part of a slot (at byte `offset`) through the engine's pinned staging buffers. */
  upload(kind: number, layer: number, offset: number, bytes: Uint8Array): void
  /** Wait for the copies and check that every slot was filled. */
  finishLoad(): void
  /**
   * Run ids.length new tokens after `past` cached ones (their K/V go into the cache).
   * logitsMode 0: none, 1: the last row, 2: every row, into `logits` (rows x vocab). Returns the
   * next token chosen on the GPU from the last row (`sampling`, or greedy when null).
   */
  forward(ids: Int32Array, positions: Int32Array, blocks: Int32Array | null, past: number, bidirectional: number,
    logitsMode: LogitsMode, logits: Float32Array | null, sampling: CudaSampling | null): number
  /**
   * positions.length decode steps back to back on the GPU, no host round trip between them: step i
   * feeds (i === 0 ? firstId : tokens[i - 1]) at positions[i] (blocks[i]) after past + i cached
   * tokens and writes its chosen token to tokens[i] (randoms[i]: its draw; null when greedy).
   * At most 512 steps a call.
   */
  decodeMany(firstId: number, positions: Int32Array, blocks: Int32Array | null, past: number, bidirectional: number,
    sampling: CudaSampling, randoms: Float32Array | null, tokens: Int32Array): void
  memory(): CudaMemoryStats
  info(): CudaEngineInfo
  setUseGraph(on: boolean): void
  /** Programmatic dependent launch in the decode step (Hopper and newer; GLMTOOL_CUDA_PDL=0 turns it off). */
  setUsePdl(on: boolean): void
  /** Free the GPU memory now (also done when the object is collected). */
  dispose(): void
}

/** Everything glmtool_cuda.node exports. */
export interface CudaAddon {
  readonly version: string
  probe(): CudaProbe
  /** Device-to-device copy rate in bytes/s, counting bytes read and written. */
  measureCopyBandwidth(bytes?: number, iters?: number): number
  readonly Engine: new (config: CudaEngineConfig) => CudaEngine
  readonly kinds: Record<WeightKindName, number>
}

/**
 * The addon interface version this code speaks (native/addon.cpp kAddonVersion). 4: the Engine
 * takes feature flags (EngineFlags) instead of a generation number.
 */
export const ADDON_VERSION = '4'

const PACKAGE_ROOT = resolve(import.meta.dirname, '..', '..', '..')

/** The platform folder of prebuilds/ for this machine (linux-x64 is the one shipped). */
export const PREBUILD_PLATFORM = `${process.platform}-${process.arch}`

/**
 * Where the addon is looked for, in order: $GLMTOOL_CUDA_ADDON alone when set; else the package's
 * prebuilt prebuilds/<platform>-<arch>/glmtool_cuda.node, then build/native/glmtool_cuda.node
 * (built from source).
 */
export function cudaAddonCandidates(root = PACKAGE_ROOT): string[] {
  if (process.env.GLMTOOL_CUDA_ADDON) return [process.env.GLMTOOL_CUDA_ADDON]
  return [join(root, 'prebuilds', PREBUILD_PLATFORM, 'glmtool_cuda.node'), join(root, 'build', 'native', 'glmtool_cuda.node')]
}

/** The first candidate that exists (what loadCudaAddon tries first), or the prebuilt path when none does. */
export function cudaAddonPath(root = PACKAGE_ROOT): string {
  const candidates = cudaAddonCandidates(root)
  return candidates.find(p => existsSync(p)) ?? candidates[0]
}

/** What to run to build the addon from source, for messages. */
export function buildFromSourceHint(root = PACKAGE_ROOT): string {
  const script = join(root, 'native', 'build.mjs')
  const inCheckout = existsSync(join(root, '.git'))
  return inCheckout
    ? `build it with \`npm run build:native\` (needs the CUDA toolkit's nvcc)`
    : `build it from source with \`node ${relative(process.cwd(), script) || script}\` (needs the CUDA toolkit's nvcc; it writes ${join(root, 'build', 'native', 'glmtool_cuda.node')}), or set GLMTOOL_CUDA_ADDON to a glmtool_cuda.node built elsewhere`
}

export class CudaUnavailableError extends GlmtoolError {
  constructor(readonly reason: string) {
    super('cuda-unavailable', `CUDA backend unavailable because ${reason}`)
  }
}

let loaded: {addon: CudaAddon, device: CudaProbe} | CudaUnavailableError | undefined

/**
 * Load the addon and check the GPU, once per process. Throws CudaUnavailableError
 * ('CUDA backend unavailable because ...') naming the real cause: the addon not built, built
 * for another glmtool, no driver or GPU, or cuBLAS missing.
 */
export function loadCudaAddon(): {addon: CudaAddon, device: CudaProbe} {
  loaded ??= tryLoad()
  if (loaded instanceof CudaUnavailableError) throw loaded
  return loaded
}

/** The reason the CUDA backend cannot run here, or undefined when it can. */
export function cudaUnavailableReason(): string | undefined {
  try {
    loadCudaAddon()
    return undefined
  } catch (error) {
    if (error instanceof CudaUnavailableError) return error.reason
    throw error
  }
}

function tryLoad(): {addon: CudaAddon, device: CudaProbe} | CudaUnavailableError {
  return loadFirst(cudaAddonCandidates(), buildFromSourceHint())
}

/**
 * Try `candidates` in order: the first that exists and is a glmtool addon of this interface
 * version is probed. A prebuilt addon that cannot be loaded or is stale falls through to the
 * source build; when none works, the error names what was found (or that nothing was) and `hint`.
 */
export function loadFirst(candidates: readonly string[], hint: string): {addon: CudaAddon, device: CudaProbe} | CudaUnavailableError {
  const present = candidates.filter(p => existsSync(p))
  if (present.length === 0) {
    const where = candidates.length === 1 ? `no ${candidates[0]}` : `no prebuilt addon for ${PREBUILD_PLATFORM} (${candidates[0]}) and none built from source (${candidates.slice(1).join(', ')})`
    return new CudaUnavailableError(`glmtool's CUDA engine is not built (${where}); ${hint}`)
  }
  let first: CudaUnavailableError | undefined
  for (const path of present) {
    const r = loadOne(path, hint)
    if ('addon' in r) return r
    // The GPU or driver said no: another file would say the same.
    if (r.probed) return r.error
    first ??= r.error
  }
  return first!
}

type LoadOutcome = {addon: CudaAddon, device: CudaProbe} | {error: CudaUnavailableError, probed: boolean}

/** Load one addon file and probe the GPU with it. */
function loadOne(path: string, hint: string): LoadOutcome {
  const fail = (why: string, probed = false) => ({error: new CudaUnavailableError(why), probed})
  let addon: CudaAddon
  try {
    addon = createRequire(import.meta.url)(path) as CudaAddon
  } catch (error) {
    return fail(`${path} cannot be loaded (${(error as Error).message.split('\n')[0]}); ${hint}`)
  }
  if (addon.version !== ADDON_VERSION) {
    return fail(`${path} is from another glmtool version (addon interface ${String(addon.version)}, this glmtool needs ${ADDON_VERSION}); ${hint}`)
  }
  for (const [name, value] of Object.entries(WEIGHT_KINDS)) {
    if (addon.kinds?.[name as WeightKindName] !== value) return fail(`${path} numbers its weight kinds differently (${name}); ${hint}`)
  }
  let device: CudaProbe
  try {
    device = addon.probe()
  } catch (error) {
    return fail(`probing the GPU failed (${(error as Error).message})`, true)
  }
  if (!device.ok) return fail(device.reason, true)
  return {addon, device}
}
