/**
 * A chat load reads config.json and detects the generation once (chat-model.ts detectModelDir),
 * handing both to the tokenizer, the ONNX conversion and the backend, instead of each detecting
 * again: detectArch (src/models/index.ts) is counted through a pass-through mock.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it, vi} from 'vitest'
import * as models from '../src/models/index.js'
import {loadChatModel} from '../src/pipelines/chat-model.js'
import {synthTiny} from './onnx-fixtures.js'

vi.mock('../src/models/index.js', async importOriginal => {
  const real = await importOriginal<typeof import('../src/models/index.js')>()
  return {...real, detectArch: vi.fn(real.detectArch)}
})

const work = mkdtempSync(join(tmpdir(), 'glmtool-chat-detect-'))
const cacheBefore = process.env.GLMTOOL_CACHE
beforeAll(() => {
  process.env.GLMTOOL_CACHE = join(work, 'cache')
})
afterAll(() => {
  if (cacheBefore === undefined) delete process.env.GLMTOOL_CACHE
  else process.env.GLMTOOL_CACHE = cacheBefore
  rmSync(work, {recursive: true, force: true})
})

describe('loadChatModel', () => {
  for (const arch of ['chatglm-6b', 'chatglm2-6b'] as const) {
    it(`${arch}: detects the generation once, on the converting load and on the cached one`, async () => {
      const dir = synthTiny(work, arch)
      const detect = vi.mocked(models.detectArch)
      for (const note of [/converting .* to ONNX once/, /using the cached ONNX conversion/]) {
        detect.mockClear()
        const notes: string[] = []
        const m = await loadChatModel(dir, {backend: 'cpu', maxLength: 32, onNote: n => notes.push(n)})
        try {
          expect(m.arch.id).toBe(arch)
          expect(m.backend.arch.id).toBe(arch)
          expect(notes.some(n => note.test(n)), notes.join('\n')).toBe(true)
          expect(detect).toHaveBeenCalledTimes(1)
        } finally {
          await m.backend.dispose()
        }
      }
    })
  }
})
