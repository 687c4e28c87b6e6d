import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {cudaUnavailableReason} from '../src/runtime/backends/cuda-addon.js'
import {chatResponse} from '../src/runtime/chat-response.js'
import {chatPromptV1, chatPromptV2} from '../src/runtime/chat-template.js'
import {loadTokenizer} from '../src/runtime/tokenizer/index.js'
import {glmtool} from './helpers/cli.js'
import {hasTorch, runReference} from './helpers/reference.js'

const work = mkdtempSync(join(tmpdir(), 'glmtool-chat-'))
const env = {GLMTOOL_CACHE: join(work, 'cache')}
const cudaReason = cudaUnavailableReason()
afterAll(() => rmSync(work, {recursive: true, force: true}))
if (!hasTorch()) console.warn('cli-chat: python3-torch not installed, chat-vs-reference check skipped (.ci/run installs it)')

describe.each([['chatglm-6b'], ['chatglm2-6b']] as const)('glmtool chat on a tiny %s', arch => {
  const model = join(work, arch)
  beforeAll(() => {
    const r = glmtool(['synth', '--arch', arch, '--size', 'tiny', '--out', model, '--seed', '5'])
    if (r.code !== 0) throw new Error(r.stderr)
  })

  it('runs turns non-interactively with --json: template, ids, text and timing per turn', async () => {
    const r = glmtool(['chat', model, '--prompt', '你好', '--prompt', 'what is 1+1?', '--greedy', '--max-length', '96', '--max-new-tokens', '12', '--json'], {env})
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.turns).toHaveLength(2)
    const tok = await loadTokenizer(model, arch)
    const [t0, t1] = out.turns
    const template = arch === 'chatglm-6b' ? chatPromptV1 : chatPromptV2
    expect(t0.promptIds).toEqual(tok.encodePrompt(template('你好', [])))
    // The second turn's prompt carries the first turn in its history.
    expect(t1.promptIds).toEqual(tok.encodePrompt(template('what is 1+1?', [['你好', t0.text]])))
    // text: the published chat()'s (decode, then process_response); decoded: the plain decode.
    expect(t0.decoded).toBe(tok.decode(t0.generatedIds))
    expect(tok.responseStyle.name).toBe(arch)
    expect(t0.text).toBe(chatResponse(tok.responseStyle, t0.decoded))
    expect(t0.generatedIds.length).toBeLessThanOrEqual(12)
    expect(t1.generatedIds.length + t1.promptIds.length).toBeLessThanOrEqual(96)
    expect(t0.timing.promptTokensPerSecond).toBeGreaterThan(0)
    // The ONNX conversion was cached: a second run reuses it.
    const again = glmtool(['chat', model, '--prompt', '你好', '--greedy', '--max-length', '96', '--max-new-tokens', '12', '--json'], {env})
    expect(again.stderr).toBe('')
    expect(JSON.parse(again.stdout).turns[0].generatedIds).toEqual(t0.generatedIds)
  })

  it.skipIf(!hasTorch())('greedy tokens equal the PyTorch reference\'s', async () => {
    const r = glmtool(['chat', model, '--prompt', 'hello there', '--greedy', '--max-length', '48', '--json'], {env})
    const turn = JSON.parse(r.stdout).turns[0]
    const tok = await loadTokenizer(model, arch)
    const text = tok.encode(arch === 'chatglm-6b' ? 'hello there' : chatPromptV2('hello there', []))
    const ref = runReference(model, text, {steps: turn.generatedIds.length})
    expect(ref.meta.input_ids).toEqual(turn.promptIds)
    // glmtool never picks ids beyond the tokenizer's vocabulary (padded embedding rows); compare up to
    // the first such reference pick, if any.
    const cut = ref.meta.generated.findIndex((id: number) => id >= tok.vocabSize)
    const n = cut < 0 ? turn.generatedIds.length : cut
    expect(n).toBeGreaterThan(4)
    expect(turn.generatedIds.slice(0, n)).toEqual(ref.meta.generated.slice(0, n))
  })

  it('leaves out the oldest turns when the history no longer fits --max-length, and says so', () => {
    const q = 'tell me a long story about the sea and the sky '
    const r = glmtool(['chat', model, '--prompt', q, '--prompt', q, '--greedy', '--max-length', '80', '--json'], {env})
    expect(r.code, r.stderr).toBe(0)
    const [t0, t1] = JSON.parse(r.stdout).turns
    expect(t0.droppedTurns).toBe(0)
    expect(t1.droppedTurns).toBe(1)
    // The second prompt is the query alone, as if there were no history.
    expect(t1.promptIds).toEqual(t0.promptIds)
  })

  it('reads turns from stdin: clear empties the history, exit ends', () => {
    const r = glmtool(['chat', model, '--greedy', '--max-length', '64'], {env, input: 'hi\nclear\nhi\nexit\nnever\n'})
    expect(r.code, r.stderr).toBe(0)
    const lines = r.stdout.split('\n').filter(Boolean)
    // Same prompt after clear -> same greedy answer; nothing after exit.
    expect(lines).toHaveLength(2)
    expect(lines[0]).toBe(lines[1])
  })

  // Where the CUDA engine can run, test/cuda-parity.test.ts covers chat on it.
  it.skipIf(cudaReason === undefined)('without a usable GPU, --backend cuda fails saying why', () => {
    const r = glmtool(['chat', model, '--backend', 'cuda', '--prompt', 'x'], {env})
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`CUDA backend unavailable because ${cudaReason}`)
  })
})

describe('glmtool chat interrupts', () => {
  it('Ctrl-C (SIGINT) stops the answer in progress, keeps the session, and the next turn runs', async () => {
    const {spawn} = await import('node:child_process')
    const {ROOT} = await import('./helpers/cli.js')
    const model = join(work, 'chatglm2-6b-interrupt')
    expect(glmtool(['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', model]).code).toBe(0)
    let err = ''
    const child = spawn(process.execPath, [join(ROOT, 'bin/run.js'), 'chat', model, '--greedy', '--max-length', '4000'], {env: {...process.env, ...env}, stdio: ['pipe', 'pipe', 'pipe']})
    let out = ''
    child.stdout.on('data', d => (out += d))
    child.stderr.on('data', d => (err += d))
    child.on('exit', () => (out += '\n[exited]'))
    child.stdin.write('hello\n')
    // Wait until the answer is streaming, then interrupt it.
    await new Promise<void>(res => {
      const t = setInterval(() => {
        if (out.length > 20 || out.includes('[exited]')) {
          clearInterval(t)
          res()
        }
      }, 20)
    })
    expect(out, err).not.toContain('[exited]')
    child.kill('SIGINT')
    await new Promise<void>(res => {
      const t = setInterval(() => {
        if (out.includes('[interrupted]') || out.includes('[exited]')) {
          clearInterval(t)
          res()
        }
      }, 20)
    })
    const exited = new Promise(res => child.on('exit', res))
    child.stdin.write('exit\n')
    const code = await exited
    expect(code).toBe(0)
    expect(out).toMatch(/\[interrupted\]\n/)
  })
})
