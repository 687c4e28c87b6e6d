/**
 * LoRA adapters as PEFT saves them (docs/chatglm.md section 7): adapter_config.json plus
 * adapter_model.safetensors or adapter_model.bin holding
 * `base_model.model.<module>.lora_A[.<adapter name>].weight` [r, in] and `...lora_B...` [out, r].
 * Everything about an adapter is checked against the base model before a byte is written.
 */
import {existsSync} from 'node:fs'
import {join} from 'node:path'
import {type Arch, ARCHS, type ModelConfig} from '../../models/index.js'
import {DTYPE_SIZE, type DType, isFloat} from '../dtype.js'
import {decodeFloats, encodeFloats} from '../dtype-convert.js'
import {DEFAULT_CHUNK_BYTES, readTensor, type TensorEntry} from '../tensor.js'
import {AdapterError} from './adapter-error.js'
import {LORA_CONFIG, LORA_WEIGHTS, openTensorFile, readJsonObject, type TensorFile} from './adapter-source.js'
import {addLoraRows, firstNonFinite, firstNonFiniteEncoded, type LoraDelta, loraScale} from './lora-math.js'
import {unsafeRegexReason} from './safe-regex.js'

/** What merge-adapter takes from adapter_config.json. */
export interface LoraConfig {
  readonly rank: number
  readonly alpha: number
  readonly scale: number
  readonly useRslora: boolean
  readonly fanInFanOut: boolean
  /** A list of module names (matched as PEFT does: the name or a `.name` suffix), or one regex. */
  readonly targetModules: readonly string[] | string
  readonly baseModel: string | undefined
}

/** One adapted module: its base weight and its two factors (indexed, not loaded). */
export interface LoraModule {
  readonly module: string
  readonly weight: string
  readonly a: TensorEntry
  readonly b: TensorEntry
}

export interface LoraAdapter {
  readonly dir: string
  readonly file: string
  readonly config: LoraConfig
  /** By module path (`transformer.layers.0.attention.query_key_value`). */
  readonly modules: Map<string, LoraModule>
  /** The adapter name inside tensor names (`default`), when the trainer kept it. */
  readonly adapterName: string | undefined
  close(): Promise<void>
}

const isNullish = (v: unknown) => v === undefined || v === null

/** Parse adapter_config.json; refuse every setting whose adapter a plain W += s*B@A would get wrong. */
export function parseLoraConfig(json: Record<string, unknown>, source: string): LoraConfig {
  const bad = (msg: string) => new AdapterError('bad-config', `${source}: ${msg}`)
  const unsupported = (msg: string) => new AdapterError('unsupported', `${source}: ${msg}`)
  if (!isNullish(json.peft_type) && json.peft_type !== 'LORA') {
    throw unsupported(`peft_type is ${JSON.stringify(json.peft_type)}; merge-adapter merges PEFT "LORA" adapters (and reads P-Tuning v2 checkpoints of THUDM's ptuning trainer with --type prefix)`)
  }
  const r = json.r
  if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= 0) throw bad(`r must be a positive integer (got ${JSON.stringify(r)})`)
  const alpha = json.lora_alpha
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw bad(`lora_alpha must be a number (got ${JSON.stringify(alpha)})`)
  const bias = json.bias ?? 'none'
  if (bias !== 'none') {
    throw new AdapterError('bias', `${source}: bias is ${JSON.stringify(bias)}; merge-adapter merges only adapters saved with bias "none" (with "all" or "lora_only" PEFT also trains biases, which it does not merge)`)
  }
  for (const key of ['fan_in_fan_out', 'use_rslora'] as const) {
    if (!isNullish(json[key]) && typeof json[key] !== 'boolean') throw bad(`${key} must be true or false (got ${JSON.stringify(json[key])})`)
  }
  if (json.use_dora === true) throw unsupported('use_dora is true: DoRA adapters (magnitude vectors) are not merged by merge-adapter')
  if (json.lora_bias === true) throw unsupported('lora_bias is true: LoRA adapters with a trained lora_B bias are not merged by merge-adapter')
  if (!isNullish(json.enable_lora)) throw unsupported('enable_lora is set: PEFT < 0.3 MergedLinear adapters are not merged by merge-adapter')
  for (const key of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = json[key]
    if (!isNullish(v) && (typeof v !== 'object' || Object.keys(v as object).length > 0)) {
      throw unsupported(`${key} is ${JSON.stringify(v)}: per-module ranks and alphas are not merged by merge-adapter`)
    }
  }
  const mts = json.modules_to_save
  if (!isNullish(mts) && !(Array.isArray(mts) && mts.length === 0)) {
    throw unsupported(`modules_to_save is ${JSON.stringify(mts)}: full copies of trained modules are not merged by merge-adapter`)
  }
  if (!isNullish(json.layer_replication)) throw unsupported('layer_replication is set: adapters that duplicate layers are not merged by merge-adapter')
  const tp = json.target_parameters
  if (Array.isArray(tp) && tp.length > 0) throw unsupported('target_parameters is set: LoRA on raw parameters is not merged by merge-adapter')
  const tm = json.target_modules
  let targetModules: readonly string[] | string
  if (typeof tm === 'string' && tm !== '') targetModules = tm
  else if (Array.isArray(tm) && tm.length > 0 && tm.every(t => typeof t === 'string' && t !== '')) targetModules = tm as string[]
  else throw bad(`target_modules must be a non-empty list of module names or a regex (got ${JSON.stringify(tm)})`)
  const useRslora = json.use_rslora === true
  return {
    rank: r, alpha, scale: loraScale(alpha, r, useRslora), useRslora,
    fanInFanOut: json.fan_in_fan_out === true,
    targetModules,
    baseModel: typeof json.base_model_name_or_path === 'string' ? json.base_model_name_or_path : undefined,
  }
}

/** PEFT's state-dict names, with or without the adapter name (ChatGLM-Tuning keeps `.default.`). */
const LORA_NAME = /^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.([^.]+))?\.weight$/

function unsupportedTensor(name: string, file: string): AdapterError {
  const why = name.includes('lora_embedding_') ? 'LoRA on embeddings is not merged by merge-adapter'
    : name.includes('lora_magnitude_vector') ? 'DoRA magnitude vectors are not merged by merge-adapter'
      : name.includes('modules_to_save') ? 'full copies of trained modules (modules_to_save) are not merged by merge-adapter'
        : /\.lora_[AB](\.[^.]+)?\.bias$/.test(name) ? 'LoRA factor biases are not merged by merge-adapter'
          : 'not a lora_A / lora_B weight'
  return new AdapterError('unsupported', `${file}: tensor ${name}: ${why}`)
}

/** Open an adapter directory (or its weights file): config parsed, tensors grouped by module. */
export async function openLoraAdapter(dir: string, file?: string): Promise<LoraAdapter> {
  const configPath = join(dir, LORA_CONFIG)
  if (!existsSync(configPath)) {
    throw new AdapterError('missing-config', `${dir}: ${LORA_CONFIG} is missing; PEFT saves it beside adapter_model.bin, and merge-adapter needs its r, lora_alpha and target_modules`)
  }
  const config = parseLoraConfig(await readJsonObject(configPath), configPath)
  const weightsPath = file ?? LORA_WEIGHTS.map(n => join(dir, n)).find(p => existsSync(p))
  if (!weightsPath) throw new AdapterError('not-found', `${dir}: no ${LORA_WEIGHTS.join(' or ')} beside ${LORA_CONFIG}`)
  const tf: TensorFile = await openTensorFile(weightsPath)
  try {
    const parts = new Map<string, {a?: TensorEntry, b?: TensorEntry}>()
    const names = new Set<string>()
    for (const t of tf.tensors) {
      const m = LORA_NAME.exec(t.name)
      if (!m) throw unsupportedTensor(t.name, weightsPath)
      const [, module, which, adapterName] = m
      names.add(adapterName ?? '')
      const p = parts.get(module) ?? {}
      if (which === 'A') p.a = t
      else p.b = t
      parts.set(module, p)
    }
    if (names.size > 1) {
      throw new AdapterError('unsupported', `${weightsPath}: holds several adapters (${[...names].map(n => n || '(unnamed)').join(', ')}); merge one at a time`)
    }
    if (parts.size === 0) throw new AdapterError('not-found', `${weightsPath}: holds no LoRA tensors`)
    const modules = new Map<string, LoraModule>()
    for (const [module, p] of parts) {
      if (!p.a || !p.b) throw new AdapterError('shape', `${weightsPath}: module ${module} has lora_${p.a ? 'A' : 'B'} but no lora_${p.a ? 'B' : 'A'}`)
      modules.set(module, {module, weight: `${module}.weight`, a: p.a, b: p.b})
    }
    const adapterName = [...names][0] || undefined
    return {dir, file: weightsPath, config, modules, adapterName, close: () => tf.close()}
  } catch (error) {
    await tf.close()
    throw error
  }
}

/** Does a module path match a target_modules list, the way PEFT matches it (the name, or a `.name` suffix)? */
function matchesTarget(module: string, targets: readonly string[]): boolean {
  return targets.some(t => module === t || module.endsWith(`.${t}`))
}

/** What a validated adapter merges: base weight name -> its factors and shape. */
export interface LoraPlan {
  readonly adapter: LoraAdapter
  readonly weights: Map<string, LoraWeightPlan>
}

/** One base weight to merge: its factors, its shape, and the adapter file (for messages). */
export interface LoraWeightPlan {
  readonly module: LoraModule
  readonly rows: number
  readonly cols: number
  readonly source?: string
}

/**
 * Check an adapter against the base model, all before anything is written: generation,
 * target modules, every factor's shape and rank, dtypes, and (reading the small factors once)
 * that no value is NaN or infinite.
 */
export async function planLora(adapter: LoraAdapter, arch: Arch, baseConfig: ModelConfig, baseTensors: readonly TensorEntry[]): Promise<LoraPlan> {
  const src = adapter.file
  const cfg = adapter.config
  const byName = new Map(baseTensors.map(t => [t.name, t]))
  // The base's linear layers: 2-D weights, word embeddings aside (PEFT adapts those differently).
  const linear = [...arch.tensors(baseConfig)].filter(([n, s]) => n.endsWith('.weight') && s.shape.length === 2 && !n.includes('word_embeddings')).map(([n]) => n.slice(0, -'.weight'.length))
  const shortNames = [...new Set(linear.map(m => m.split('.').pop()!))]
  if (cfg.targetModules === 'all-linear') {
    // PEFT's shorthand: every linear layer but the output layer.
  } else if (typeof cfg.targetModules === 'string') {
    let re: RegExp
    const unsafe = unsafeRegexReason(cfg.targetModules)
    if (unsafe) {
      throw new AdapterError('bad-config', `${adapter.dir}/${LORA_CONFIG}: target_modules regex ${JSON.stringify(cfg.targetModules.slice(0, 80))} is refused: ${unsafe}; list the module names instead`)
    }
    try {
      // ^(?:...)$ is Python's re.fullmatch, as PEFT matches.
      re = new RegExp(`^(?:${cfg.targetModules})$`)
    } catch (error) {
      throw new AdapterError('bad-config', `${adapter.dir}/${LORA_CONFIG}: target_modules ${JSON.stringify(cfg.targetModules)} is not a valid regex (${(error as Error).message})`)
    }
    if (!linear.some(m => re.test(m))) {
      throw new AdapterError('target', `${adapter.dir}/${LORA_CONFIG}: target_modules ${JSON.stringify(cfg.targetModules)} matches no module of ${arch.id} (its linear layers: ${shortNames.join(', ')})`)
    }
  } else {
    for (const t of cfg.targetModules) {
      if (!linear.some(m => matchesTarget(m, [t]))) {
        throw new AdapterError('target', `${adapter.dir}/${LORA_CONFIG}: target module ${JSON.stringify(t)} does not exist in ${arch.id} (its linear layers: ${shortNames.join(', ')})`)
      }
    }
  }
  const {hidden: H, layers} = arch.dims(baseConfig)
  const linearSet = new Set(linear)
  const weights = new Map<string, LoraWeightPlan>()
  for (const m of adapter.modules.values()) {
    if (!linearSet.has(m.module)) {
      // The module paths of another network's layers: "this adapter is for the other one".
      const other = ARCHS.find(a => a.network !== arch.network && a.loraLayerPattern.test(m.module))
      if (other) {
        throw new AdapterError('generation', `${src}: adapter was made for ${other.network} (it adapts ${m.module}); the base model is ${arch.id}${cfg.baseModel ? ` (adapter_config.json names ${cfg.baseModel})` : ''}`)
      }
      const layer = /\.layers\.(\d+)\./.exec(m.module)
      const hint = layer && Number(layer[1]) >= layers ? ` (the base has ${layers} layers)` : ''
      throw new AdapterError('target', `${src}: adapter adapts ${m.module}, which is not a linear layer of the base ${arch.id} model${hint}`)
    }
    if (typeof cfg.targetModules !== 'string' && !matchesTarget(m.module, cfg.targetModules)) {
      // PEFT only creates factors for target modules; a file that disagrees with its config is suspect.
      throw new AdapterError('target', `${src}: adapter has factors for ${m.module}, which target_modules ${JSON.stringify(cfg.targetModules)} does not name`)
    }
    const w = byName.get(m.weight)
    if (!w) throw new AdapterError('target', `${src}: base model has no tensor ${m.weight}`)
    if (!isFloat(w.dtype)) throw new AdapterError('base', `${src}: base weight ${m.weight} is ${w.dtype}; LoRA merges into float weights only (merge before quantizing)`)
    for (const f of [m.a, m.b]) {
      if (!isFloat(f.dtype)) throw new AdapterError('shape', `${src}: tensor ${f.name} is ${f.dtype}, not a float type`)
      if (f.shape.length !== 2) throw new AdapterError('shape', `${src}: tensor ${f.name} has shape [${f.shape}], expected a matrix`)
    }
    const [rows, cols] = w.shape
    // A rank above min(in, out) adds nothing a full-rank update could not, and with stride-0
    // factors a 1 KB file could claim r = 2^21 and make the merge allocate gigabytes.
    if (cfg.rank > Math.min(rows, cols)) {
      throw new AdapterError('rank', `${src}: ${m.module}: adapter_config.json says r = ${cfg.rank}, more than min(out, in) = ${Math.min(rows, cols)} of the base weight [${rows}, ${cols}]`)
    }
    const [rA, inA] = m.a.shape
    const [outB, rB] = m.b.shape
    if (rA !== rB) throw new AdapterError('rank', `${src}: ${m.module}: lora_A is [${m.a.shape}] and lora_B is [${m.b.shape}]: their ranks ${rA} and ${rB} differ`)
    if (rA !== cfg.rank) throw new AdapterError('rank', `${src}: ${m.module}: lora_A is [${m.a.shape}], rank ${rA}, but adapter_config.json says r = ${cfg.rank}`)
    const fits = cfg.fanInFanOut ? outB === cols && inA === rows : outB === rows && inA === cols
    if (!fits) {
      const product = cfg.fanInFanOut ? `(lora_B @ lora_A)^T is [${inA}, ${outB}]` : `lora_B @ lora_A is [${outB}, ${inA}]`
      let hint = ''
      const theirs = cfg.fanInFanOut ? {rows: inA, cols: outB} : {rows: outB, cols: inA}
      const hidden = cols === H && theirs.cols !== H ? theirs.cols : rows === H && theirs.rows !== H ? theirs.rows : undefined
      if (hidden !== undefined) hint = `; the adapter was made for hidden size ${hidden}, the base has ${H}`
      else if (cfg.fanInFanOut && outB === rows && inA === cols) hint = '; the factors fit without the transpose: PEFT turns fan_in_fan_out off for nn.Linear layers like ChatGLM\'s, so adapter_config.json is probably wrong'
      throw new AdapterError('shape', `${src}: ${m.module}: ${product}, but the base weight is [${rows}, ${cols}]${hint}`)
    }
    weights.set(m.weight, {module: m, rows, cols, source: src})
  }
  // NaN/Inf check up front (the factors are small), so a bad adapter fails before any output.
  for (const {module: m} of weights.values()) {
    for (const f of [m.a, m.b]) {
      const values = decodeFloats(await readTensor(f), f.dtype)
      const bad = firstNonFinite(values)
      if (bad >= 0) throw new AdapterError('non-finite', `${src}: tensor ${f.name} holds ${values[bad]} at element ${bad}; refusing to merge NaN/Inf into the model`)
    }
  }
  return {adapter, weights}
}

async function loadDelta(m: LoraModule, rows: number, cols: number, cfg: LoraConfig): Promise<LoraDelta> {
  return {
    a: decodeFloats(await readTensor(m.a), m.a.dtype),
    b: decodeFloats(await readTensor(m.b), m.b.dtype),
    rank: cfg.rank, rows, cols, scale: cfg.scale, fanInFanOut: cfg.fanInFanOut,
  }
}

const MERGE_PIECE_BYTES = 16 * 1024 * 1024

/**
 * The merged weight as a TensorEntry that computes as it streams: whole rows of the base
 * weight are decoded to float32, get their share of scale * B @ A, and are cast once to
 * `outDtype`. Memory: the factors plus one piece of rows (never the whole weight twice).
 */
export function mergedLoraTensor(w: TensorEntry, plan: LoraWeightPlan, cfg: LoraConfig, outDtype: DType): TensorEntry {
  const {rows, cols} = plan
  return {
    name: w.name, dtype: outDtype, shape: w.shape, file: w.file,
    async *chunks(maxChunkBytes = DEFAULT_CHUNK_BYTES) {
      const delta = await loadDelta(plan.module, rows, cols, cfg)
      const inRow = cols * DTYPE_SIZE[w.dtype]
      const outElem = DTYPE_SIZE[outDtype]
      // Pieces of at most 16 MB of rows: the float32 copy of a piece is what costs memory.
      const rowsPerPiece = Math.max(1, Math.floor(Math.min(maxChunkBytes, MERGE_PIECE_BYTES) / (cols * Math.max(outElem, DTYPE_SIZE[w.dtype], 4))))
      const outStep = Math.max(outElem, Math.floor(maxChunkBytes / outElem) * outElem)
      const scratch = new Float64Array(cols)
      let row = 0
      let carry: Buffer | undefined
      for await (const piece of w.chunks(rowsPerPiece * inRow)) {
        // Pieces hold whole elements, not always whole rows: keep a partial row for the next one.
        const buf = carry ? Buffer.concat([carry, piece]) : piece
        const whole = Math.floor(buf.length / inRow)
        for (let r0 = 0; r0 < whole; r0 += rowsPerPiece) {
          const n = Math.min(rowsPerPiece, whole - r0)
          const values = decodeFloats(buf.subarray(r0 * inRow, (r0 + n) * inRow), w.dtype)
          addLoraRows(values, row, delta, scratch)
          const out = encodeFloats(values, outDtype)
          // Finite factors can still overflow: their product, or its rounding to the output dtype.
          const bad = firstNonFiniteEncoded(out, values, outDtype)
          if (bad >= 0) {
            const at = row * cols + bad
            throw new AdapterError('non-finite', `${plan.source ?? plan.module.a.file}: merging into tensor ${w.name} gives ${values[bad] === Infinity || values[bad] === -Infinity || Number.isNaN(values[bad]) ? values[bad] : `${values[bad]} (beyond ${outDtype})`} at [${Math.floor(at / cols)}, ${at % cols}]; the adapter's update overflows, nothing was written`)
          }
          row += n
          for (let o = 0; o < out.length; o += outStep) yield out.subarray(o, Math.min(out.length, o + outStep))
        }
        const rest = buf.length - whole * inRow
        // Copy: the reader may reuse the piece's buffer for the next read.
        carry = rest > 0 ? Buffer.from(buf.subarray(whole * inRow)) : undefined
      }
      if (carry || row !== rows) throw new AdapterError('base', `${w.file}: tensor ${w.name} ended after ${row} of ${rows} rows`)
    },
  }
}
