/**
 * P-Tuning v2 checkpoints as THUDM's ptuning trainer saves them (chatglm.md section 7):
 * a checkpoint directory with config.json (the model config plus pre_seq_len and
 * prefix_projection) and pytorch_model.bin holding transformer.prefix_encoder.* (the
 * trainer's save_changed mode keeps only trainable parameters; a whole-model save also works).
 *
 * The published encoders differ between generations when prefix_projection is on, so shapes
 * are read from the tensors, not assumed: ChatGLM-6B embeds to hidden_size and maps
 * Linear(H, H) -> Tanh -> Linear(H, L*2*H); ChatGLM2-6B embeds to kv_size = L*2*G*D and maps
 * Linear(kv_size, H) -> Tanh -> Linear(H, kv_size).
 */
import {existsSync} from 'node:fs'
import {join} from 'node:path'
import {prefixCacheName, PREFIX_CACHE_MARKER} from '../../models/arch.js'
import {type Arch, detectArch, type ModelConfig} from '../../models/index.js'
import {isFloat} from '../dtype.js'
import {decodeFloats, encodeFloats} from '../dtype-convert.js'
import {openModel} from '../model-dir.js'
import {memoryTensor, readTensor, type TensorEntry} from '../tensor.js'
import {AdapterError} from './adapter-error.js'
import {openTensorFile, readJsonObject} from './adapter-source.js'
import {firstNonFinite} from './lora-math.js'
import {type LinearWeights, runPrefixEncoder, splitPrefixKeyValues} from './prefix-math.js'

const ENC = 'transformer.prefix_encoder.'

/** A P-Tuning checkpoint: its config and the prefix encoder's tensors (indexed, not loaded). */
export interface PrefixCheckpoint {
  readonly dir: string
  readonly files: string[]
  readonly config: ModelConfig
  readonly arch: Arch | undefined
  readonly preSeqLen: number
  readonly projection: boolean
  /** Encoder tensors by their name after `transformer.prefix_encoder.` (`embedding.weight`, `trans.0.weight`, ...). */
  readonly tensors: Map<string, TensorEntry>
  close(): Promise<void>
}

/** How a base model lays out its KV cache: per layer, kvHeads heads of headDim. */
export interface KvGeometry {
  readonly layers: number
  readonly kvHeads: number
  readonly headDim: number
}

/** v1 caches every attention head (H/heads wide); v2 one entry per multi-query group (kv_channels wide). */
export function kvGeometry(arch: Arch, config: ModelConfig): KvGeometry {
  const num = (k: string) => {
    const v = config[k]
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new AdapterError('bad-config', `config.json: ${k} must be a positive integer (got ${JSON.stringify(v)})`)
    return v
  }
  const layers = num('num_layers')
  const heads = num('num_attention_heads')
  if (arch.generation === 1) return {layers, kvHeads: heads, headDim: num('hidden_size') / heads}
  const kvHeads = config.multi_query_attention === false ? heads : num('multi_query_group_num')
  const headDim = config.kv_channels === undefined ? num('hidden_size') / heads : num('kv_channels')
  return {layers, kvHeads, headDim}
}

/** Open a checkpoint directory (or its pytorch_model.bin); config.json must give pre_seq_len. */
export async function openPrefixCheckpoint(dir: string, file?: string): Promise<PrefixCheckpoint> {
  const configPath = join(dir, 'config.json')
  if (!existsSync(configPath)) {
    throw new AdapterError('missing-config', `${dir}: config.json is missing; the ptuning trainer saves it beside pytorch_model.bin, and merge-adapter needs its pre_seq_len and prefix_projection`)
  }
  const config = await readJsonObject(configPath)
  const P = config.pre_seq_len
  if (P === undefined || P === null) {
    throw new AdapterError('bad-config', `${configPath}: no pre_seq_len, so this is not a P-Tuning v2 checkpoint (the ptuning trainer writes pre_seq_len and prefix_projection)`)
  }
  if (typeof P !== 'number' || !Number.isSafeInteger(P) || P <= 0) throw new AdapterError('bad-config', `${configPath}: pre_seq_len must be a positive integer (got ${JSON.stringify(P)})`)
  const pp = config.prefix_projection ?? false
  if (typeof pp !== 'boolean') throw new AdapterError('bad-config', `${configPath}: prefix_projection must be true or false (got ${JSON.stringify(pp)})`)
  let arch: Arch | undefined
  try {
    arch = detectArch(config, [], configPath)
  } catch {
    arch = undefined // a trimmed config: the tensor shapes are checked against the base anyway
  }

  let tensors: TensorEntry[]
  let files: string[]
  let close: () => Promise<void>
  const single = file ?? ['pytorch_model.bin', 'model.safetensors'].map(n => join(dir, n)).find(p => existsSync(p))
  if (single) {
    const tf = await openTensorFile(single)
    ;({tensors} = tf)
    files = [single]
    close = () => tf.close()
  } else if (existsSync(join(dir, 'pytorch_model.bin.index.json')) || existsSync(join(dir, 'model.safetensors.index.json'))) {
    // A whole-model save (the trainer without save_changed): sharded like any model.
    const m = await openModel(dir)
    ;({tensors} = m)
    files = m.files
    close = () => m.close()
  } else {
    throw new AdapterError('not-found', `${dir}: no pytorch_model.bin (the ptuning trainer's weights file) beside config.json`)
  }
  const enc = new Map(tensors.filter(t => t.name.startsWith(ENC)).map(t => [t.name.slice(ENC.length), t]))
  if (!enc.has('embedding.weight')) {
    await close()
    throw new AdapterError('not-found', `${files[0]}: no ${ENC}embedding.weight (the P-Tuning v2 prefix encoder)`)
  }
  return {dir, files, config, arch, preSeqLen: P, projection: pp, tensors: enc, close}
}

async function floats(t: TensorEntry, file: string): Promise<Float32Array> {
  if (!isFloat(t.dtype)) throw new AdapterError('shape', `${file}: tensor ${ENC}${t.name} is ${t.dtype}, not a float type`)
  const v = decodeFloats(await readTensor(t), t.dtype)
  const bad = firstNonFinite(v)
  if (bad >= 0) throw new AdapterError('non-finite', `${file}: tensor ${ENC}${t.name} holds ${v[bad]} at element ${bad}; refusing to store NaN/Inf in the model`)
  return v
}

/** The prefix's float32 tensors for the output model, and what went into them. */
export interface PrefixCache {
  readonly tensors: TensorEntry[]
  readonly geometry: KvGeometry
  readonly preSeqLen: number
  readonly projection: boolean
  /** The config.json keys that say the model carries the prefix. */
  readonly configKeys: ModelConfig
  readonly warnings: string[]
}

/**
 * Check the checkpoint against the base model, run the encoder once in float32, and cut its
 * output into `transformer.prefix_cache.<i>.key` / `.value`, each [kvHeads, pre_seq_len, headDim].
 */
export async function computePrefixCache(ck: PrefixCheckpoint, arch: Arch, baseConfig: ModelConfig): Promise<PrefixCache> {
  const file = ck.files[0]
  const warnings: string[] = []
  if (ck.arch && ck.arch.id !== arch.id) {
    throw new AdapterError('generation', `${ck.dir}: P-Tuning checkpoint was trained on ${ck.arch.id} (its config.json); the base model is ${arch.id}`)
  }
  const g = kvGeometry(arch, baseConfig)
  if (ck.arch) {
    for (const k of ['num_layers', 'hidden_size', 'num_attention_heads', 'kv_channels', 'multi_query_group_num']) {
      if (ck.config[k] !== undefined && baseConfig[k] !== undefined && ck.config[k] !== baseConfig[k]) {
        throw new AdapterError('shape', `${ck.dir}: P-Tuning checkpoint was trained on a model with ${k} ${JSON.stringify(ck.config[k])}; the base has ${JSON.stringify(baseConfig[k])}`)
      }
    }
  }
  const P = ck.preSeqLen
  const n = g.layers * 2 * g.kvHeads * g.headDim
  const need = `${g.layers} layers x 2 x ${g.kvHeads} ${arch.generation === 1 ? 'heads' : 'groups'} x ${g.headDim} = ${n}`
  const emb = ck.tensors.get('embedding.weight')!
  if (emb.shape.length !== 2 || emb.shape[0] !== P) {
    throw new AdapterError('shape', `${file}: ${ENC}embedding.weight is [${emb.shape}], but config.json says pre_seq_len ${P}`)
  }
  const E = emb.shape[1]
  const tensor = (name: string) => {
    const t = ck.tensors.get(name)
    if (!t) throw new AdapterError('not-found', `${file}: prefix_projection is true but ${ENC}${name} is missing`)
    return t
  }
  let projection: {first: LinearWeights, second: LinearWeights} | undefined
  if (ck.projection) {
    const [w1, b1, w2, b2] = ['trans.0.weight', 'trans.0.bias', 'trans.2.weight', 'trans.2.bias'].map(tensor)
    const M = w1.shape[0]
    const ok = w1.shape.length === 2 && w1.shape[1] === E && b1.shape.join() === `${M}` &&
      w2.shape.length === 2 && w2.shape[1] === M && b2.shape.join() === `${w2.shape[0]}`
    if (!ok) {
      throw new AdapterError('shape', `${file}: prefix encoder layers do not chain: embedding [${emb.shape}], trans.0 [${w1.shape}] + [${b1.shape}], trans.2 [${w2.shape}] + [${b2.shape}]`)
    }
    if (w2.shape[0] !== n) {
      throw new AdapterError('shape', `${file}: prefix encoder produces ${w2.shape[0]} values per prefix token; the base ${arch.id} needs ${need}`)
    }
    projection = {
      first: {weight: await floats(w1, file), bias: await floats(b1, file), inFeatures: E, outFeatures: M},
      second: {weight: await floats(w2, file), bias: await floats(b2, file), inFeatures: M, outFeatures: n},
    }
  } else {
    if (E !== n) throw new AdapterError('shape', `${file}: ${ENC}embedding.weight is [${emb.shape}]; the base ${arch.id} needs [${P}, ${n}] (${need})`)
    if (ck.tensors.has('trans.0.weight')) warnings.push(`${file}: has prefix_encoder.trans.* but config.json says prefix_projection false; they are ignored, as the published model ignores them`)
  }
  const {values} = runPrefixEncoder({preSeqLen: P, embedding: await floats(emb, file), embeddingWidth: E, projection})
  const bad = firstNonFinite(values)
  if (bad >= 0) throw new AdapterError('non-finite', `${file}: the prefix encoder's output holds ${values[bad]} at element ${bad}`)
  const layers = splitPrefixKeyValues(values, P, g.layers, g.kvHeads, g.headDim)
  const shape = [g.kvHeads, P, g.headDim]
  const bytes = (a: Float32Array) => encodeFloats(a, 'F32')
  const tensors = layers.flatMap((l, i) => [
    memoryTensor(prefixCacheName(i, 'key'), 'F32', shape, bytes(l.key)),
    memoryTensor(prefixCacheName(i, 'value'), 'F32', shape, bytes(l.value)),
  ])
  return {
    tensors, geometry: g, preSeqLen: P, projection: ck.projection, warnings,
    // The prefix is stored already projected, so a reader must not project it again.
    configKeys: {pre_seq_len: P, prefix_projection: false, glmtool_prefix: PREFIX_CACHE_MARKER},
  }
}
