import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {byteLength} from '../formats/dtype.js'
import {writeSafetensorsFile} from '../formats/safetensors-writer.js'
import {memoryTensor} from '../formats/tensor.js'
import type {Arch, ModelConfig} from '../models/index.js'
import {fillNormal, hash32} from './random.js'

/**
 * A small random LoRA adapter saved as PEFT saves one (adapter_config.json +
 * adapter_model.safetensors, `base_model.model.<module>.lora_{A,B}.weight`), on every
 * query_key_value of a model: for the demo and for trying merge-adapter without a fine-tune.
 * B is random rather than PEFT's zero init, so merging visibly changes the model.
 */
export async function writeSynthLora(dir: string, arch: Arch, config: ModelConfig, opts: {r?: number, alpha?: number, seed?: number} = {}): Promise<{modules: number, r: number}> {
  const r = opts.r ?? 4
  const seed = opts.seed ?? 0
  const tensors = []
  for (const [name, spec] of arch.tensors(config)) {
    if (!name.endsWith('query_key_value.weight')) continue
    const module = name.slice(0, -'.weight'.length)
    const [out, inp] = spec.shape
    for (const [part, shape] of [['A', [r, inp]], ['B', [out, r]]] as const) {
      const tname = `base_model.model.${module}.lora_${part}.weight`
      const buf = Buffer.alloc(byteLength('F32', shape))
      fillNormal(buf, 'F32', shape[0] * shape[1], 0, 0.02, hash32(tname, seed))
      tensors.push(memoryTensor(tname, 'F32', shape, buf))
    }
  }
  await mkdir(dir, {recursive: true})
  await writeSafetensorsFile(join(dir, 'adapter_model.safetensors'), tensors, {format: 'pt'})
  const adapterConfig = {
    peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: String(config._name_or_path ?? arch.id),
    r, lora_alpha: opts.alpha ?? 2 * r, lora_dropout: 0.0, target_modules: ['query_key_value'],
    fan_in_fan_out: false, bias: 'none', use_rslora: false, inference_mode: true, modules_to_save: null,
  }
  await writeFile(join(dir, 'adapter_config.json'), JSON.stringify(adapterConfig, null, 2) + '\n')
  return {modules: tensors.length / 2, r}
}
