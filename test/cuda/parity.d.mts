/** Types of test/cuda/parity.mjs (plain JavaScript so that it runs on the GPU machine without tsx). */
export declare const FP16_TOL: number
export declare const BF16_TOL: number
export declare const STEPS: number

export interface ParityCaseResult {
  model: string
  dtype?: string
  promptTokens: number
  steps: number
  tol: number
  vsReference?: {prefill: number, decodeGraph: number, decodeNoGraph: number}
  vsCpuRuntime?: number
  cpuVsReference?: number
  graphVsNoGraph?: number
  pdl?: boolean
  greedyTeacherForced?: {same: number, of: number, misses: {step: number, cuda: number, reference: number, referenceMargin: number}[]}
  freeRun?: {identical: boolean, firstDifference: number | null, tokens: number}
  /** decodeMany (steps back to back on the GPU) vs the per-step path: greedy (graph / launch by launch) and sampled tokens identical. */
  decodeMany?: {greedyGraph: boolean, greedyPlain: boolean, sampled: boolean, identical: boolean}
  /** Cases with `against` (rope_ratio 50): the prompt rows' relative difference from that model's reference (must exceed 10x tol). */
  vsAgainst?: {model: string, prefill: number}
  maxRel?: number
  ok: boolean
  tokensIdentical?: boolean
  error?: string
}

export interface ParitySummary {
  device: {name: string, computeCapability: string, driverVersion: number, cublas: string}
  referenceDevice: string
  results: ParityCaseResult[]
}

export declare function parityCases(quick?: boolean): {model: string, ids: number[], against?: string}[]
export declare function runParity(opts?: {work?: string, quick?: boolean, only?: string[], refDevice?: string, log?: (line: string) => void}): Promise<ParitySummary>
