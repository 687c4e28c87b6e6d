/**
 * The CPU's memory read rate, measured the way CPU decode reads memory (issue 13): onnxruntime's
 * float32 MatMul of one row [1, K] by a [K, N] matrix passed as an *input* (so it is not
 * prepacked), with the same intra-op threads as the backend. The matrix (1 GiB by default) is far
 * larger than any cache, and each run reads all of it once; the rate is bytes / the fastest of
 * `rounds` runs. Bench's CPU roofline is the bytes a decoded token reads over this rate.
 *
 * It runs in a child process, so its 1 GiB does not count in the bench process's peak RSS, and
 * no library measures this for us: STREAM-style tools are C programs a user would not have, and
 * the rate that matters is the one onnxruntime's own kernels reach on this machine.
 */
import {execFileSync} from 'node:child_process'
import {fileURLToPath, pathToFileURL} from 'node:url'
import {DEFAULT_OPSET, ELEM, encodeModel, GraphBuilder, IR_VERSION} from '../formats/onnx/onnx-builder.js'
import {GlmtoolError} from '../errors.js'

export interface ReadBandwidth {
  /** Bytes per second: the matrix's bytes over the fastest run. */
  bytesPerSecond: number
  matrixBytes: number
  rounds: number
  /** onnxruntime intra-op threads (undefined: onnxruntime's default, as the backend's). */
  threads?: number
}

const K = 4096

/** Measure in this process (the child's side). */
export async function measureReadBandwidthHere(opts: {matrixBytes?: number, rounds?: number, threads?: number} = {}): Promise<ReadBandwidth> {
  const {ort} = await import('../runtime/backends/ort.js')
  const O = ort()
  const N = Math.max(1, Math.floor((opts.matrixBytes ?? 2 ** 30) / 4 / K))
  const rounds = opts.rounds ?? 8
  const b = new GraphBuilder()
  b.input('x', ELEM.FLOAT, [1, K])
  b.input('w', ELEM.FLOAT, [K, N])
  b.output(b.op('MatMul', ['x', 'w']), 'y', ELEM.FLOAT, [1, N])
  const model = encodeModel({
    irVersion: IR_VERSION, opsetImport: [{domain: '', version: DEFAULT_OPSET}],
    graph: {name: 'read-bandwidth', node: b.nodes, initializer: b.initializers, input: b.inputs, output: b.outputs},
  })
  const session = await O.InferenceSession.create(model, {executionProviders: ['cpu'], ...(opts.threads ? {intraOpNumThreads: opts.threads} : {})})
  try {
    // Every page written first, so no run pays for first-touch faults.
    const w = new Float32Array(K * N).fill(1 / K)
    const feeds = {x: new O.Tensor('float32', new Float32Array(K).fill(1), [1, K]), w: new O.Tensor('float32', w, [K, N])}
    let best = Infinity
    for (let r = 0; r < rounds; r++) {
      const t0 = process.hrtime.bigint()
      const out = await session.run(feeds)
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9)
      // A wrong product would mean the kernel skipped work: 1/K summed K times is 1.
      const y = out.y.data as Float32Array
      if (Math.abs(y[0] - 1) > 1e-3 || Math.abs(y[N - 1] - 1) > 1e-3) throw new GlmtoolError('bench-bandwidth', `read-bandwidth MatMul returned ${y[0]}, not 1`)
    }
    return {bytesPerSecond: (K * N * 4) / best, matrixBytes: K * N * 4, rounds, threads: opts.threads}
  } finally {
    await session.release()
  }
}

/** Measure in a child process (bench's entry): the parent's RSS stays its own. */
export function measureReadBandwidth(opts: {matrixBytes?: number, rounds?: number, threads?: number} = {}): ReadBandwidth {
  const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), JSON.stringify(opts)], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000})
  return JSON.parse(out) as ReadBandwidth
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const r = await measureReadBandwidthHere(JSON.parse(process.argv[2] ?? '{}'))
  process.stdout.write(JSON.stringify(r) + '\n')
}
