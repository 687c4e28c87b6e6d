/**
 * The web chat page in a real browser: Debian's Chromium, driven by playwright-core, against a
 * `glmtool serve` on 127.0.0.1. Send a message and see the streamed answer, stop a slow answer,
 * clear; a screenshot is taken (GLMTOOL_SCREENSHOT=1 writes it to docs/serve-page.png).
 */
import {existsSync, mkdirSync, mkdtempSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {chromium} from 'playwright-core'
import {afterAll, describe, expect, it} from 'vitest'
import {glmtool, ROOT} from './helpers/cli.js'
import {startServer} from './helpers/serve.js'

const CHROMIUM = '/usr/bin/chromium'
const haveChromium = existsSync(CHROMIUM)
if (!haveChromium) console.warn('serve-page: /usr/bin/chromium is absent (Debian package chromium; .ci/run installs it), browser test skipped')
const work = mkdtempSync(join(tmpdir(), 'glmtool-page-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

describe.skipIf(!haveChromium)('the chat page in headless Chromium', () => {
  it('streams an answer, stops one, clears the history', async () => {
    const torch = join(work, 'torch')
    const onnx = join(work, 'tiny-v2')
    for (const args of [['synth', '--arch', 'chatglm2-6b', '--size', 'tiny', '--out', torch, '--seed', '2'], ['convert', torch, '--to', 'onnx', '--out', onnx]]) {
      const r = glmtool(args)
      expect(r.code, r.stderr).toBe(0)
    }
    const server = await startServer(onnx, ['--max-length', '512'], {GLMTOOL_TEST_TOKEN_DELAY_MS: '15'})
    const browser = await chromium.launch({
      executablePath: CHROMIUM, headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    })
    try {
      const page = await browser.newPage({viewport: {width: 1100, height: 720}})
      await page.goto(server.url)
      await expect.poll(() => page.textContent('#model')).toContain('tiny-v2')
      // A short, greedy answer streams in and completes.
      await page.fill('#temperature', '0')
      await page.fill('#maxLength', '40')
      await page.fill('#input', '你好')
      await page.click('#send')
      await page.waitForFunction(() => document.getElementById('status')!.textContent!.startsWith('done') || document.getElementById('status')!.textContent!.startsWith('stopped at'), null, {timeout: 60_000})
      const answer = await page.textContent('.assistant .text')
      expect(answer!.length).toBeGreaterThan(0)
      // The same request through the API gives the same text (the page adds no second code path).
      const api = await fetch(`${server.url}/v1/chat/completions`, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({messages: [{role: 'user', content: '你好'}], max_length: 40, temperature: 0, top_p: 0.8})})
      expect((await api.json()).choices[0].message.content).toBe(answer)
      // A long answer is stopped by the Stop button.
      await page.fill('#maxLength', '512')
      await page.fill('#input', 'tell me more')
      await page.click('#send')
      await page.waitForFunction(() => document.querySelectorAll('.assistant .text')[1]?.textContent!.length > 3, null, {timeout: 60_000})
      await page.click('#stop')
      await page.waitForFunction(() => document.getElementById('status')!.textContent === 'stopped', null, {timeout: 10_000})
      expect(await page.textContent('.assistant:nth-of-type(4) .text')).toContain('[stopped]')
      // GLMTOOL_SCREENSHOT=1 refreshes the committed docs/serve-page.png; otherwise a temporary file.
      const shot = process.env.GLMTOOL_SCREENSHOT === '1' ? join(ROOT, 'docs/serve-page.png') : join(work, 'serve-page.png')
      mkdirSync(join(shot, '..'), {recursive: true})
      await page.screenshot({path: shot})
      expect(statSync(shot).size).toBeGreaterThan(10_000)
      await page.click('#clear')
      expect(await page.$$('.msg')).toHaveLength(0)
      expect(await page.textContent('#status')).toBe('history cleared')
    } finally {
      await browser.close()
      expect(await server.stop()).toBe(0)
    }
  })
})
