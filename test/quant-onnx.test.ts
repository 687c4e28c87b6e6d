import * as ort from 'onnxruntime-node'
import {describe, expect, it} from 'vitest'
import {encodeModel, onnx, type TensorProto} from '../src/formats/onnx/onnx-builder.js'
import {dequantToF32} from '../src/quant/dequant.js'
import {f16ToNumber} from '../src/quant/fp16.js'
import {packMatMulNBits, type MatMulNBitsWeight} from '../src/quant/pack.js'
import {quantizeRtn, toFp16Weight, type QuantBits} from '../src/quant/rtn.js'
import {gaussian, randomWeight} from './quant-helpers.js'

/**
 * Proves pack.ts's MatMulNBits layout against ONNX Runtime itself: a one-node model
 * (com.microsoft MatMulNBits, hand-encoded with onnx.proto through protobufjs) run by onnxruntime-node on the CPU
 * must give X @ dequant(W)^T, where dequant is the published q * scale.
 */
const T = onnx.TensorProto.DataType

function model(m: MatMulNBitsWeight, rowsA: number): Uint8Array {
  const scalesT = m.scaleType === 'float16' ? T.FLOAT16 : T.FLOAT
  const scaleBytes = new Uint8Array(m.scales.buffer, m.scales.byteOffset, m.scales.byteLength)
  const init: TensorProto[] = [
    {name: 'B', dataType: T.UINT8, dims: [...m.bShape], rawData: m.B},
    {name: 'scales', dataType: scalesT, dims: [...m.scalesShape], rawData: scaleBytes},
  ]
  const inputs = ['A', 'B', 'scales']
  if (m.zeroPoints) {
    init.push({name: 'zero_points', dataType: T.UINT8, dims: [...m.zeroPointsShape!], rawData: m.zeroPoints})
    inputs.push('zero_points')
  }
  const AT = onnx.AttributeProto.AttributeType
  const vi = (name: string, dims: number[]) => ({name, type: {tensorType: {elemType: scalesT, shape: {dim: dims.map(d => ({dimValue: d}))}}}})
  return encodeModel({
    irVersion: 8,
    opsetImport: [{domain: '', version: 17}, {domain: 'com.microsoft', version: 1}],
    producerName: 'glmtool-test',
    graph: {
      name: 'matmulnbits',
      node: [{
        opType: 'MatMulNBits', domain: 'com.microsoft', name: 'mm', input: inputs, output: ['Y'],
        attribute: [
          {name: 'K', type: AT.INT, i: m.K},
          {name: 'N', type: AT.INT, i: m.N},
          {name: 'bits', type: AT.INT, i: m.bits},
          {name: 'block_size', type: AT.INT, i: m.blockSize},
          {name: 'accuracy_level', type: AT.INT, i: 0},
        ],
      }],
      initializer: init,
      input: [vi('A', [rowsA, m.K])],
      output: [vi('Y', [rowsA, m.N])],
    },
  })
}

async function run(m: MatMulNBitsWeight, x: Float32Array, rowsA: number): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(model(m, rowsA), {executionProviders: ['cpu'], graphOptimizationLevel: 'disabled'})
  try {
    const out = await session.run({A: new ort.Tensor('float32', x, [rowsA, m.K])})
    return out.Y.data as Float32Array
  } finally {
    await session.release()
  }
}

describe('MatMulNBits packing through onnxruntime-node ' + ort.env.versions.node, () => {
  const rowsA = 5
  const N = 12
  const K = 256
  const cases: [QuantBits, number, number, boolean][] = [
    // bits, groupSize, blockSize, explicit zero points
    [4, 32, 32, false], [4, 128, 128, false], [4, 256, 64, false], [4, 64, 16, true],
    [8, 32, 32, false], [8, 128, 128, false], [8, 256, 64, true], [8, 64, 16, false],
  ]
  for (const [bits, groupSize, blockSize, explicitZeroPoints] of cases) {
    it(`${bits}-bit, group ${groupSize}, block_size ${blockSize}${explicitZeroPoints ? ', explicit zero points' : ''}`, async () => {
      const w = toFp16Weight(randomWeight(N, K, 100 + bits * 7 + blockSize), 'F32')
      const qw = quantizeRtn(w, N, K, {bits, groupSize})
      const m = packMatMulNBits(qw, {blockSize, explicitZeroPoints})
      const g = gaussian(blockSize + bits)
      const x = new Float32Array(rowsA * K).map(() => g())
      const y = await run(m, x, rowsA)
      const wq = dequantToF32(qw)
      for (let r = 0; r < rowsA; r++) {
        for (let n = 0; n < N; n++) {
          let ref = 0
          let mag = 0
          for (let k = 0; k < K; k++) {
            ref += x[r * K + k] * wq[n * K + k]
            mag += Math.abs(x[r * K + k] * wq[n * K + k])
          }
          // f32 accumulation of K products: error well below K * 2^-24 * sum|terms|.
          expect(Math.abs(y[r * N + n] - ref), `row ${r}, col ${n}`).toBeLessThanOrEqual(K * 2 ** -24 * mag + 1e-30)
        }
      }
      // A wrong nibble order or zero point would be off by whole quantization steps.
      const pairSwapped = packMatMulNBits({...qw, q: swapPairs(qw.q)}, {blockSize, explicitZeroPoints})
      if (bits === 4) expect(await run(pairSwapped, x, rowsA)).not.toEqual(y)
    })
  }

  it('float16 scales with float16 activations, if this build runs them on the CPU', async () => {
    const bits = 4
    const w = toFp16Weight(randomWeight(N, K, 9), 'F32')
    const qw = quantizeRtn(w, N, K, {bits, groupSize: 32})
    const m = packMatMulNBits(qw, {blockSize: 32, scaleType: 'float16'})
    let session: ort.InferenceSession
    try {
      session = await ort.InferenceSession.create(model(m, 1), {executionProviders: ['cpu']})
    } catch (e) {
      console.warn(`onnxruntime CPU has no float16 MatMulNBits here: ${(e as Error).message.split('\n')[0]}`)
      return
    }
    const x16 = new Uint16Array(K).fill(0x3c00) // all ones
    const out = await session.run({A: new ort.Tensor('float16', x16, [1, K])})
    await session.release()
    const wq = dequantToF32(qw)
    const y = out.Y.data as Uint16Array
    for (let n = 0; n < N; n++) {
      let ref = 0
      let mag = 0
      for (let k = 0; k < K; k++) {
        ref += wq[n * K + k]
        mag += Math.abs(wq[n * K + k])
      }
      expect(Math.abs(f16ToNumber(y[n]) - ref)).toBeLessThanOrEqual(mag * 2 ** -8)
    }
  })
})

function swapPairs(q: Int8Array): Int8Array {
  const out = new Int8Array(q.length)
  for (let i = 0; i < q.length; i += 2) {
    out[i] = q[i + 1]
    out[i + 1] = q[i]
  }
  return out
}
