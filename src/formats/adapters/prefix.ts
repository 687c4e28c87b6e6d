/**
 * P-Tuning v2 checkpoints as THUDM's ptuning trainer saves them (docs/chatglm.md section 7):
 * a checkpoint directory with config.json (the model config plus pre_seq_len and
 * prefix_projection) and pytorch_model.bin holding transformer.prefix_encoder.* (the
 * trainer's save_changed mode keeps only trainable parameters; a whole-model save also works).
 *
 * The published encoders differ between generations when prefix_projection is on, so shapes
 * are read from the tensors, not assumed: ChatGLM-6B embeds to hidden_size and maps
 * Linear(H, H) -> Tanh -> Linear(H, L*2*H); ChatGLM2-6B embeds to kv_size = L*2*G*D and maps
 * Linear(kv_size, H) -> Tanh -> Linear(H, kv_size).
 *
 * Whether the encoder projects follows the published code, not only the flag: ChatGLM2-6B's
 * configuration_chatglm.py stores prefix_projection as a one-element tuple, always true, so the
 * published v2 model always builds and applies trans.* (the module's prefix.alwaysProjects). A v2
 * checkpoint without trans.* does not load there (load_state_dict: missing trans.0.weight ...),
 * so merge-adapter refuses it rather than guess; ChatGLM3-6B's configuration honours the flag.
 *
 * The merged model carries the prefix twice: glmtool's transformer.prefix_cache.* (the keys and
 * values, computed once) and the published encoder's own tensors, so that the published
 * modeling_chatglm.py, which builds a PrefixEncoder whenever config.json has pre_seq_len, loads
 * the same prefix instead of a randomly initialised one (encoderTensors).
 */
import {existsSync} from 'node:fs'
import {join} from 'node:path'
import {prefixCacheName, PREFIX_CACHE_MARKER, prefixProjectionFlag} from '../../models/arch.js'
import {type Arch, detectArch, type ModelConfig, namedArch} from '../../models/index.js'
import {isFloat} from '../dtype.js'
import {decodeFloats, encodeFloats} from '../dtype-convert.js'
import {openModel} from '../../pipelines/model-dir.js'
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
  /** config.json's prefix_projection, truthy as Python reads it (`[false]` is true). */
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

/** The base's KV cache layout, from its module's config parser (v1: every attention head; v2: one entry per multi-query group). */
export function kvGeometry(arch: Arch, config: ModelConfig): KvGeometry {
  const {layers, kvHeads, headDim} = arch.dims(config)
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
  const pp = prefixProjectionFlag(config.prefix_projection)
  if (pp === undefined) throw new AdapterError('bad-config', `${configPath}: prefix_projection must be true, false or a one-element list of either (got ${JSON.stringify(config.prefix_projection)})`)
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
  /** Whether the published model applies the projection MLP (what was computed). */
  readonly projection: boolean
  /** The published encoder's tensors for the output, in the shapes the published model builds from configKeys. */
  readonly encoderTensors: TensorEntry[]
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
  // The network decides here; ChatGLM2-6B against ChatGLM3-6B is told from the names below.
  if (ck.arch && ck.arch.network !== arch.network) {
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
  const need = `${g.layers} layers x 2 x ${g.kvHeads} ${arch.prefix.kvUnit} x ${g.headDim} = ${n}`
  const emb = ck.tensors.get('embedding.weight')!
  if (emb.shape.length !== 2 || emb.shape[0] !== P) {
    throw new AdapterError('shape', `${file}: ${ENC}embedding.weight is [${emb.shape}], but config.json says pre_seq_len ${P}`)
  }
  const E = emb.shape[1]
  // Which published model loads the merged output (ChatGLM2-6B and ChatGLM3-6B have the same
  // tensors; their configs read the flag differently): the generation the checkpoint's
  // _name_or_path names, else the base's, else the base's module. The base's code is what loads
  // the merged model, so the two names must agree where both say.
  const ckNamed = namedArch(arch.network, ck.config)
  const baseNamed = namedArch(arch.network, baseConfig)
  if (ckNamed && baseNamed && ckNamed !== baseNamed) {
    throw new AdapterError('generation', `${ck.dir}: P-Tuning checkpoint was trained on ${ckNamed.displayName} (its config.json _name_or_path ${JSON.stringify(ck.config._name_or_path)}); the base model is ${baseNamed.displayName} (${JSON.stringify(baseConfig._name_or_path)})`)
  }
  const published = ckNamed ?? baseNamed ?? arch
  const rules = published.prefix
  const projects = rules.alwaysProjects || ck.projection
  const hasTrans = ck.tensors.has('trans.0.weight')
  // v2's embedding is n wide whether it projects or not: a wrong width says more than "no trans.*".
  if (rules.embeddingIsKvSize && E !== n) throw new AdapterError('shape', `${file}: ${ENC}embedding.weight is [${emb.shape}]; the base ${arch.id} needs [${P}, ${n}] (${need})`)
  if (projects && !ck.projection && !hasTrans) {
    throw new AdapterError('unloadable', `${file}: no ${ENC}trans.* (config.json prefix_projection ${JSON.stringify(ck.config.prefix_projection ?? false)}); the published ${published.displayName} config stores prefix_projection as a tuple, always true, so its model always builds the projection MLP and cannot load this checkpoint (a ChatGLM3-6B checkpoint names chatglm3 in config.json's _name_or_path)`)
  }
  const tensor = (name: string) => {
    const t = ck.tensors.get(name)
    if (!t) throw new AdapterError('not-found', `${file}: ${ck.projection ? 'prefix_projection is true' : `the published ${arch.id} always projects`} but ${ENC}${name} is missing`)
    return t
  }
  let projection: {first: LinearWeights, second: LinearWeights} | undefined
  if (projects) {
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
    if (hasTrans) warnings.push(`${file}: has prefix_encoder.trans.* but config.json says prefix_projection false; they are ignored, as the published ${published.displayName} model (which builds no projection then) ignores them`)
  }
  const embedding = await floats(emb, file)
  const {values} = runPrefixEncoder({preSeqLen: P, embedding, embeddingWidth: E, projection})
  const bad = firstNonFinite(values)
  if (bad >= 0) throw new AdapterError('non-finite', `${file}: the prefix encoder's output holds ${values[bad]} at element ${bad}`)
  const layers = splitPrefixKeyValues(values, P, g.layers, g.kvHeads, g.headDim)
  const shape = [g.kvHeads, P, g.headDim]
  const bytes = (a: Float32Array) => encodeFloats(a, 'F32')
  const tensors = layers.flatMap((l, i) => [
    memoryTensor(prefixCacheName(i, 'key'), 'F32', shape, bytes(l.key)),
    memoryTensor(prefixCacheName(i, 'value'), 'F32', shape, bytes(l.value)),
  ])
  // The published encoder's tensors. Where the published model honours prefix_projection false
  // (ChatGLM-6B, ChatGLM3-6B) the prefix is stored collapsed: embedding = the encoder's output,
  // [P, n], which that model uses as is (for v1's projection this is 117 MB at full size instead
  // of the 3.8 GB trans.2). ChatGLM2-6B always projects, so its output carries the checkpoint's
  // own embedding and trans.*, and the published model computes from them what it computes from
  // the checkpoint.
  const f32 = (name: string, shape: readonly number[], v: Float32Array) => memoryTensor(`${ENC}${name}`, 'F32', shape, bytes(v))
  const keepsProjection = projection !== undefined && rules.alwaysProjects
  const encoderTensors = keepsProjection && projection
    ? [
        f32('embedding.weight', emb.shape, embedding),
        f32('trans.0.weight', [projection.first.outFeatures, projection.first.inFeatures], projection.first.weight),
        f32('trans.0.bias', [projection.first.outFeatures], projection.first.bias),
        f32('trans.2.weight', [projection.second.outFeatures, projection.second.inFeatures], projection.second.weight),
        f32('trans.2.bias', [projection.second.outFeatures], projection.second.bias),
      ]
    : [f32('embedding.weight', [P, n], values)]
  return {
    tensors, encoderTensors, geometry: g, preSeqLen: P, projection: projects, warnings,
    // glmtool reads the prefix cache (already projected); prefix_projection describes encoderTensors.
    configKeys: {pre_seq_len: P, prefix_projection: keepsProjection, glmtool_prefix: PREFIX_CACHE_MARKER},
  }
}
