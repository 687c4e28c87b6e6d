/**
 * Tiny models for the ONNX tests: the synth models of both generations, and "sharpened"
 * copies whose query_key_value weights are scaled up. Synth weights are N(0, 0.02), so in a
 * tiny model the attention scores are ~0.03 and softmax is nearly uniform: a wrong rotary
 * frequency, mask entry or KV-cache row then moves the logits by less than float32 noise.
 * Scaling q and k by `factor` scales the scores by factor^2, making attention peaked so
 * those mistakes show.
 */
import {spawnSync} from 'node:child_process'
import {copyFileSync, existsSync, readdirSync} from 'node:fs'
import {mkdir} from 'node:fs/promises'
import {join} from 'node:path'
import {decodeFloats, encodeFloats} from '../src/formats/dtype-convert.js'
import {isWeightFile, openModel, TORCH_SINGLE} from '../src/pipelines/model-dir.js'
import {memoryTensor, readTensor, type TensorEntry} from '../src/formats/tensor.js'
import {writeTorchCheckpoint} from '../src/formats/torch-writer.js'
import {glmtool} from './helpers/cli.js'

export type TinyArch = 'chatglm-6b' | 'chatglm2-6b'

/** `glmtool synth --size tiny` into dir/<arch> (once per dir). */
export function synthTiny(dir: string, arch: TinyArch): string {
  const out = join(dir, arch)
  if (!existsSync(out)) {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', out])
    if (r.code !== 0) throw new Error(`synth ${arch} failed: ${r.stderr}`)
  }
  return out
}

/** A copy of `src` (one pytorch_model.bin) with every query_key_value weight multiplied by `factor`. */
export async function sharpenedModel(src: string, out: string, factor: number): Promise<string> {
  if (existsSync(out)) return out
  await mkdir(out, {recursive: true})
  const model = await openModel(src)
  try {
    const tensors: TensorEntry[] = []
    for (const t of model.tensors) {
      if (!t.name.endsWith('query_key_value.weight')) {
        tensors.push(t)
        continue
      }
      const values = decodeFloats(await readTensor(t), t.dtype).map(v => v * factor)
      tensors.push(memoryTensor(t.name, t.dtype, t.shape, encodeFloats(values, t.dtype)))
    }
    await writeTorchCheckpoint(join(out, TORCH_SINGLE), tensors)
  } finally {
    await model.close()
  }
  for (const f of readdirSync(src)) if (!isWeightFile(f)) copyFileSync(join(src, f), join(out, f))
  return out
}

/** python3-onnx's checker on a model path (external data resolved beside it); undefined when onnx is not installed. */
export function onnxChecker(modelPath: string): {ok: boolean, message: string} | undefined {
  const probe = spawnSync('/usr/bin/python3', ['-c', 'import onnx'], {encoding: 'utf8'})
  if (probe.error || probe.status !== 0) return undefined
  const r = spawnSync('/usr/bin/python3', ['-c', 'import onnx, sys; onnx.checker.check_model(sys.argv[1]); print("ok")', modelPath], {encoding: 'utf8'})
  return {ok: r.status === 0 && r.stdout.trim() === 'ok', message: (r.stderr || r.stdout).trim()}
}

/**
 * Tiny synth models of both generations with sharpened logits (sharpenedModel, x16), converted to
 * ONNX in `work` (extra: convert flags, e.g. --dtype f32); the two export directories.
 */
export async function sharpenedOnnxPair(work: string, extra: string[] = []): Promise<Record<'v1' | 'v2', string>> {
  const out: Record<'v1' | 'v2', string> = {v1: '', v2: ''}
  for (const [key, arch] of [['v1', 'chatglm-6b'], ['v2', 'chatglm2-6b']] as const) {
    const model = await sharpenedModel(synthTiny(work, arch), join(work, `${arch}-sharp`), 16)
    out[key] = `${model}-onnx`
    const r = glmtool(['convert', model, '--to', 'onnx', ...extra, '--out', out[key]])
    if (r.code !== 0) throw new Error(`convert ${model} --to onnx: ${r.stderr}`)
  }
  return out
}
