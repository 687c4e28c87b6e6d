/**
 * The independent PyTorch reference (test/reference/chatglm_ref.py) from vitest: run it on a
 * model directory and read its logits, to check glmtool's runtimes against.
 *
 * Output format of the script (see its docstring): `meta.json` and `logits.f32`, raw
 * little-endian float32, `rows x vocab` row-major. With `allLogits` one row per prompt token
 * (in `meta.input_ids` order, specials included) then one per decode step; without, the last
 * prompt row then one per decode step. `meta.generated[k]` is the argmax of output row k
 * counted from the last prompt row; the first `steps` of them were fed back, one per step.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

/** Debian's python (the one with python3-torch); the pyenv python3 on PATH has no torch. */
export const REFERENCE_PYTHON = '/usr/bin/python3'
export const REFERENCE_SCRIPT = join(import.meta.dirname, '../reference/chatglm_ref.py')
export const REFERENCE_TESTS = join(import.meta.dirname, '../reference/test_chatglm_ref.py')
export const NO_TORCH_REASON = 'python3-torch not installed; .ci/run installs it'

let torchAvailable: boolean | undefined

/** Whether `/usr/bin/python3 -c 'import torch'` works (cached). */
export function hasTorch(): boolean {
  torchAvailable ??= spawnSync(REFERENCE_PYTHON, ['-c', 'import torch'], {stdio: 'ignore'}).status === 0
  return torchAvailable
}

export interface ReferenceSelfCheck {
  prompt_len: number
  steps: number
  max_rel_prefill: number
  max_rel_decode: number
  max_rel: number
  max_abs: number
  argmax_equal: boolean
  tol: number
  ok: boolean
}

export interface ReferenceMeta {
  arch: 'chatglm-6b' | 'chatglm2-6b'
  /** The prompt as run, specials included (v1: text + [gMASK, <sop>]; v2: [gMASK, sop] + text). */
  input_ids: number[]
  /**
   * Positions of the prompt tokens then of the token fed at each decode step
   * (`input_ids.length + steps` entries): v1 `[positions, blockPositions]`, v2 `positions`.
   */
  positions: number[] | [number[], number[]]
  /** Greedy argmax of every row from the last prompt row on (`steps + 1` ids). */
  generated: number[]
  rows: number
  vocab: number
  prompt_len: number
  steps: number
  all_logits: boolean
  dtype: 'f32' | 'f16' | 'bf16'
  rope: 'published' | 'exact'
  prefix_len: number
  self_check: ReferenceSelfCheck | null
}

export interface ReferenceOptions {
  /** Greedy decode steps after the prompt (default 0). */
  steps?: number
  /** One row per prompt token instead of only the last (default false). */
  allLogits?: boolean
  /** A P-Tuning v2 checkpoint (`pytorch_model.bin` or its directory). */
  prefix?: string
  /** PEFT LoRA adapter directory applied at run time (unmerged). */
  lora?: string
  /** Default f32; f16/bf16 emulate the published half-precision run. */
  dtype?: 'f32' | 'f16' | 'bf16'
  /** v1 rotary frequencies: fp16-rounded as published (default) or exact. */
  rope?: 'published' | 'exact'
  /** Also run the cache-vs-recompute self-check (result in `meta.self_check`). */
  selfCheck?: boolean
  timeoutMs?: number
}

export interface ReferenceResult {
  meta: ReferenceMeta
  /** rows x vocab, row-major. */
  logits: Float32Array
  /** Row r of `logits` (a view). */
  row(r: number): Float32Array
}

/**
 * Run the reference on `modelDir` for the TEXT token ids `textIds` (the script adds the
 * specials and builds positions and masks). Throws with the script's stderr on failure.
 */
export function runReference(modelDir: string, textIds: readonly number[], opts: ReferenceOptions = {}): ReferenceResult {
  const out = mkdtempSync(join(tmpdir(), 'glmtool-ref-'))
  try {
    const args = [REFERENCE_SCRIPT, '--model', modelDir, '--ids', textIds.join(','), '--steps', String(opts.steps ?? 0), '--out', out]
    if (opts.allLogits) args.push('--all-logits')
    if (opts.prefix) args.push('--prefix', opts.prefix)
    if (opts.lora) args.push('--lora', opts.lora)
    if (opts.dtype) args.push('--dtype', opts.dtype)
    if (opts.rope) args.push('--rope', opts.rope)
    if (opts.selfCheck) args.push('--self-check')
    const r = spawnSync(REFERENCE_PYTHON, args, {encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000, maxBuffer: 16 * 1024 * 1024})
    if (r.error) throw new Error(`reference: ${r.error.message}`)
    if (r.status !== 0) throw new Error(`reference exited ${r.status}: ${r.stderr.trim() || r.stdout.trim()}`)
    const meta = JSON.parse(readFileSync(join(out, 'meta.json'), 'utf8')) as ReferenceMeta
    const bytes = readFileSync(join(out, 'logits.f32'))
    if (bytes.length !== meta.rows * meta.vocab * 4) {
      throw new Error(`reference: logits.f32 has ${bytes.length} bytes, expected ${meta.rows} x ${meta.vocab} x 4`)
    }
    // Copy into an aligned buffer; decode explicitly as little-endian.
    const logits = new Float32Array(meta.rows * meta.vocab)
    for (let i = 0; i < logits.length; i++) logits[i] = bytes.readFloatLE(4 * i)
    return {meta, logits, row: (k: number) => logits.subarray(k * meta.vocab, (k + 1) * meta.vocab)}
  } finally {
    rmSync(out, {recursive: true, force: true})
  }
}

export interface LogitsComparison {
  /** max over rows of max_i |a_i - b_i| / max_i |b_i| (Infinity if anything is not finite). */
  maxRel: number
  /** max_i |a_i - b_i| over everything. */
  maxAbs: number
  /** The row where maxRel occurs. */
  worstRow: number
  rows: number
  relTol: number
  /** maxRel <= relTol. */
  ok: boolean
}

/**
 * Compare logits `a` (under test) against `b` (the reference), row by row.
 *
 * Relative error of a row = max|a - b| / max|b| over that row, i.e. the largest absolute
 * difference scaled by the row's largest reference logit magnitude (not element-wise, which
 * blows up on logits near zero). `maxRel` is the worst row's. `vocab` splits the arrays into
 * rows (default: one row).
 */
export function compareLogits(a: Float32Array | number[], b: Float32Array | number[], relTol: number, vocab = b.length): LogitsComparison {
  if (a.length !== b.length) throw new Error(`compareLogits: lengths differ (${a.length} vs ${b.length})`)
  if (vocab <= 0 || b.length % vocab !== 0) throw new Error(`compareLogits: ${b.length} values are not whole rows of ${vocab}`)
  const rows = b.length / vocab
  let maxRel = 0
  let maxAbs = 0
  let worstRow = 0
  for (let r = 0; r < rows; r++) {
    let diff = 0
    let scale = 0
    for (let i = r * vocab; i < (r + 1) * vocab; i++) {
      const x = a[i]
      const y = b[i]
      if (!Number.isFinite(x) || !Number.isFinite(y)) {
        diff = Infinity
        break
      }
      diff = Math.max(diff, Math.abs(x - y))
      scale = Math.max(scale, Math.abs(y))
    }
    const rel = diff === 0 ? 0 : diff / Math.max(scale, 1e-30)
    maxAbs = Math.max(maxAbs, diff)
    if (rel > maxRel || (r === 0 && rel >= maxRel)) {
      maxRel = rel
      worstRow = r
    }
  }
  return {maxRel, maxAbs, worstRow, rows, relTol, ok: maxRel <= relTol}
}
