/**
 * The CUDA engine against the PyTorch reference and the CPU runtime (test/cuda/parity.mjs): runs
 * where the addon is built and a GPU is usable; elsewhere (CI) it is skipped and says why.
 * Criteria (issue 6): float16 logits within 2e-2 relative of the float32 reference on every
 * prompt row and 64 decode steps, through the CUDA graph and launch by launch (bit-identical to
 * each other); greedy tokens identical, a miss allowed only at a near-tie of the reference
 * (margin within the tolerance). bfloat16: 6e-2. Quantized cases (issue 12: int8 / int4, per channel
 * and grouped, tiny and small synth of both generations): CUDA logits within 2e-2 relative of the
 * CPU runtime on the same `glmtool quantize --format both` output (its MatMulNBits graph), teacher-
 * forced on the CPU runtime's greedy tokens. ChatGLM3-6B-32k's rope_ratio 50 (rotary base 10000 * 50):
 * a sharpened tiny model whose config.json says so, against the reference reading it, and more than
 * 10x the tolerance away from the rope_ratio 1 model's reference (so an engine ignoring it fails).
 */
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {cudaUnavailableReason} from '../src/runtime/backends/cuda-addon.js'
import {glmtool} from './helpers/cli.js'
import {hasTorch} from './helpers/reference.js'

const reason = cudaUnavailableReason()
const torchOk = process.env.GLMTOOL_REFERENCE_PYTHON !== undefined || hasTorch()
if (reason) console.warn(`cuda parity: skipped: CUDA backend unavailable because ${reason}`)
else if (!torchOk) console.warn('cuda parity: skipped: no python3 with torch for the reference')

describe.skipIf(reason !== undefined || !torchOk)('CUDA engine parity', () => {
  it('tiny and small synth models of both generations, fp16 and bf16, int8 and int4, rope_ratio 50, 64 greedy steps', async () => {
    const {runParity} = await import('./cuda/parity.mjs')
    const summary = await runParity({refDevice: process.env.GLMTOOL_REFERENCE_DEVICE ?? 'cuda'})
    for (const r of summary.results) {
      expect(r.error, r.model).toBeUndefined()
      expect(r.ok, JSON.stringify(r)).toBe(true)
    }
  }, 900_000)
})

describe.skipIf(reason !== undefined)('glmtool chat --backend cuda', () => {
  const work = mkdtempSync(join(tmpdir(), 'glmtool-cuda-chat-'))
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  /** A greedy turn of up to 8 tokens, chosen on the GPU. */
  const cudaTurn = (model: string) => {
    const r = glmtool(['chat', model, '--backend', 'cuda', '--prompt', 'hello', '--greedy', '--max-new-tokens', '8', '--json'], {env: {GLMTOOL_CACHE: join(work, 'cache')}})
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.backend).toBe('cuda')
    expect(out.turns[0].generatedIds.length).toBeGreaterThan(0)
    expect(out.turns[0].generatedIds.length).toBeLessThanOrEqual(8)
  }

  it.each([['chatglm-6b'], ['chatglm2-6b']])('%s: a greedy turn from glmtool\'s safetensors output, tokens chosen on the GPU', arch => {
    const model = join(work, arch)
    expect(glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', `${model}-torch`]).code).toBe(0)
    expect(glmtool(['convert', `${model}-torch`, '--to', 'safetensors', '--out', model]).code).toBe(0)
    cudaTurn(model)
  })

  // A torch directory streams straight onto the GPU; its pieces are in shared memory (the reader
  // checks their CRC-32 on a worker), which the addon's upload must accept.
  it.each([['chatglm-6b'], ['chatglm2-6b'], ['chatglm3-6b']])('%s: a greedy turn straight from the published torch layout', arch => {
    const model = join(work, `${arch}-direct`)
    expect(glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', model]).code).toBe(0)
    cudaTurn(model)
  })

  it.each([['chatglm-6b', '4'], ['chatglm2-6b', '8']])('%s int%s from glmtool quantize: a greedy turn on the GPU', (arch, bits) => {
    const model = join(work, `${arch}-q${bits}`)
    expect(glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', `${model}-torch`]).code).toBe(0)
    expect(glmtool(['quantize', `${model}-torch`, '--bits', bits, '--out', model, '--evaluate', 'off']).code).toBe(0)
    cudaTurn(model)
  })
})
