import {readFile} from 'node:fs/promises'
import {GlmtoolError} from '../../errors.js'
import {archById} from '../../models/index.js'
import type {ChatTokenizer} from '../../runtime/tokenizer/index.js'

/**
 * Calibration text -> model inputs. Text is cut into paragraphs (blank lines, or one per line
 * when a file has no blank lines), tokenized with the model's own tokenizer, and packed into
 * sequences of at most `seqLen` tokens, each wrapped as the model's prompts are ([gMASK, sop]
 * before the text for v2, after it for v1: src/runtime/tokenizer/index.ts encodePrompt), so the
 * statistics come from the attention pattern and positions a prompt gets.
 */

export class CalibrationDataError extends GlmtoolError {
  constructor(message: string) {
    super('calibration-data', message)
  }
}

/** Read a calibration file: UTF-8 (strictly), not empty. */
export async function readCalibrationFile(path: string): Promise<string> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (error) {
    const e = error as NodeJS.ErrnoException
    throw new CalibrationDataError(`calibration file ${path}: cannot read (${e.code === 'ENOENT' ? 'no such file' : e.code ?? e.message})`)
  }
  const bad = firstInvalidUtf8(bytes)
  if (bad >= 0) throw new CalibrationDataError(`calibration file ${path} is not UTF-8 text (invalid byte 0x${bytes[bad].toString(16).padStart(2, '0')} at offset ${bad})`)
  let text = bytes.toString('utf8')
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
  if (text.trim() === '') throw new CalibrationDataError(`calibration file ${path} is empty`)
  return text
}

/**
 * Offset of the first byte that starts an invalid UTF-8 sequence (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or -1 when the whole buffer is valid.
 */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0
  while (i < b.length) {
    const c = b[i]
    let n: number
    let min: number
    if (c < 0x80) {
      i++
      continue
    } else if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80]
    else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800]
    else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000]
    else return i
    let cp = c & (0x3f >> n)
    for (let k = 1; k <= n; k++) {
      const d = b[i + k]
      if (d === undefined || (d & 0xc0) !== 0x80) return i
      cp = (cp << 6) | (d & 0x3f)
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i
    i += n + 1
  }
  return -1
}

export function splitParagraphs(text: string): string[] {
  const normalized = text.replace(/\r\n?/g, '\n')
  const parts = /\n\s*\n/.test(normalized) ? normalized.split(/\n\s*\n/) : normalized.split('\n')
  return parts.map(p => p.trim()).filter(p => p.length > 0)
}

/**
 * Token sequences for the model: paragraphs' ids concatenated (a newline between paragraphs)
 * and cut into pieces of seqLen - 2 text tokens, each wrapped with [gMASK] and sop; at most
 * maxSequences of them.
 */
export function tokenSequences(tokenizer: ChatTokenizer, paragraphs: readonly string[], seqLen: number, maxSequences: number): number[][] {
  if (seqLen < 3) throw new CalibrationDataError(`sequence length ${seqLen} is too short`)
  const ids: number[] = []
  const sep = tokenizer.encode('\n')
  for (const p of paragraphs) {
    if (ids.length > 0) ids.push(...sep)
    ids.push(...tokenizer.encode(p))
    if (ids.length >= seqLen * maxSequences) break
  }
  const body = seqLen - 2
  const {gmask, sop} = tokenizer.specials
  const out: number[][] = []
  for (let i = 0; i < ids.length && out.length < maxSequences; i += body) {
    const piece = ids.slice(i, i + body)
    if (piece.length < Math.min(8, body) && out.length > 0) break // a scrap at the end adds nothing
    out.push(archById(tokenizer.arch).framePrompt(piece, {gmask, sop}))
  }
  if (out.length === 0) throw new CalibrationDataError('the calibration text gives no tokens')
  return out
}
