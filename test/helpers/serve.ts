/**
 * Start `glmtool serve` as a user would (a child process on a free loopback port) and stop it.
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {join} from 'node:path'
import {ROOT} from './cli.js'

export interface RunningServer {
  url: string
  proc: ChildProcess
  /** Everything the server wrote to stderr so far. */
  log(): string
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>
}

export async function startServer(model: string, args: string[] = [], env: Record<string, string> = {}): Promise<RunningServer> {
  const proc = spawn(process.execPath, [join(ROOT, 'bin/run.js'), 'serve', model, '--port', '0', ...args], {
    cwd: ROOT, env: {...process.env, ...env}, stdio: ['ignore', 'pipe', 'pipe'],
  })
  let err = ''
  proc.stderr!.on('data', (d: Buffer) => {
    err += d.toString()
  })
  proc.stdout!.resume()
  const exited = new Promise<number | null>(resolve => proc.on('exit', code => resolve(code)))
  const url = await new Promise<string>((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error(`serve did not start in 120 s: ${err}`)), 120_000)
    const check = () => {
      const m = /at (http:\/\/[^\s]+)\s/.exec(err)
      if (m) {
        clearTimeout(deadline)
        resolve(m[1])
      }
    }
    proc.stderr!.on('data', check)
    proc.on('exit', code => {
      clearTimeout(deadline)
      reject(new Error(`serve exited with ${code}: ${err}`))
    })
  })
  return {
    url, proc, log: () => err,
    stop: async () => {
      if (proc.exitCode === null) proc.kill('SIGTERM')
      return exited
    },
  }
}

/** Read a server-sent-event stream to its end: the data payloads, in order. */
export async function readEvents(res: Response): Promise<string[]> {
  const text = await res.text()
  return text.split('\n\n').filter(e => e.startsWith('data: ')).map(e => e.slice(6))
}
