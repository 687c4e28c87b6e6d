import {
  closeSync, existsSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync,
  renameSync, rmdirSync, rmSync, statSync, unlinkSync, writeFileSync,
} from 'node:fs'
import {type FileHandle, mkdir, open, readdir} from 'node:fs/promises'
import {hostname} from 'node:os'
import {basename, dirname, join, resolve, sep} from 'node:path'
import {GlmtoolError, InterruptedError, UsageError} from '../errors.js'

/**
 * Every directory glmtool writes (synth, convert, quantize, merge-adapter, chat's ONNX cache,
 * demo), and the one single-file output (`convert --to gguf --out x.gguf`), goes through here,
 * so that it appears whole or not at all and never harms an input:
 *
 * 1. Before any work, `claimOutput` refuses an output that is, contains or lies inside an input
 *    (real paths: symlinks, "model/.", $PWD/model, trailing slashes), removes what dead glmtool
 *    runs left beside the target (by owner pid), takes the target's lock, and refuses an
 *    existing target without --force.
 * 2. The build writes into a temporary directory beside the target (same filesystem, so the
 *    final rename is atomic); every file and directory in it is fsynced, then it is renamed into
 *    place with no-replace semantics, and the parent is fsynced. A file target (`kind: 'file'`)
 *    is built as a temporary file beside it, fsynced, and put in place the same way (see
 *    commitFile).
 * 3. Ctrl-C / SIGTERM only sets a flag: the build stops at its next `checkpoint()`, the temporary
 *    directories are removed once, and the message says whether the target was written. A
 *    second signal stops at once (the same clean-up, synchronously).
 *
 * Files beside a target `dir/name` (all hidden, all matched by ENTRY below):
 * - `.name.glmtool-lock`: the lock and journal, JSON {pid, host, start, state, old}. It exists
 *   exactly while a run owns the target; a second run fails while its owner lives.
 * - `.name.glmtool-tmp-<pid>-<id>`: the build's directory and scratch directories (or, for a
 *   file target, the file being written).
 * - `.name.glmtool-old-<pid>-<id>`: the previous output during a --force replace.
 * - `.name.glmtool-lock-<pid>-<id>`: a journal being written (renamed over the lock).
 * - `.name.glmtool-break`: held for the moment a dead run's lock is being recovered.
 */

export interface OutputInput {
  /** What it is, for messages: 'input model', 'adapter', 'calibration file', ... */
  what: string
  path: string
}

export interface OutputOptions {
  force: boolean
  /** What the target is: a directory (the default; built with `write`) or one file (built with `writeFile`). */
  kind?: 'directory' | 'file'
  /** Paths the run reads: the output may not be, contain, or lie inside any of them. */
  inputs?: readonly OutputInput[]
}

// --- 1. --out apart from the inputs ---------------------------------------------------------

/**
 * The real path `p` names: the nearest existing ancestor of the lexically resolved path through
 * realpath (symlinks, "."), and the not-yet-existing rest appended. Lexical resolution first is
 * what the rest of this module does with a target (every call below uses `resolve(target)`).
 */
export function realPathOf(p: string): string {
  let head = resolve(p)
  const tail: string[] = []
  for (;;) {
    try {
      return join(realpathSync(head), ...tail.reverse())
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw error
    }
    const up = dirname(head)
    if (up === head) return resolve(p)
    tail.push(basename(head))
    head = up
  }
}

function inside(inner: string, outer: string): boolean {
  return inner.startsWith(outer.endsWith(sep) ? outer : outer + sep)
}

/**
 * Refuse an output that equals, contains or lies inside one of `inputs`, comparing real paths.
 * The target is compared both through a symlink it may be (what it points to) and as the entry
 * itself (its parent's real path and its name), since --force would replace the entry.
 */
export function assertOutputApart(target: string, inputs: readonly OutputInput[]): void {
  const out = resolve(target)
  const outs = [...new Set([realPathOf(out), join(realPathOf(dirname(out)), basename(out))])]
  for (const input of inputs) {
    const real = realPathOf(input.path)
    for (const o of outs) {
      const how = o === real ? 'is' : inside(real, o) ? 'contains' : inside(o, real) ? 'lies inside' : undefined
      if (how) {
        throw new UsageError(`--out ${target} (${o}) ${how} the ${input.what} ${input.path} (${real}); choose an output directory apart from the inputs`)
      }
    }
  }
}

// --- owners: which process made an entry, and whether it still runs -------------------------

interface Owner {
  pid: number
  host: string
  /** Process start time (clock ticks since boot, /proc/<pid>/stat field 22): tells a reused pid apart. */
  start?: string
}

function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which is in parentheses and may hold spaces.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

const SELF: Owner = {pid: process.pid, host: hostname(), start: processStart(process.pid)}

/** True only when `o` surely no longer runs; another host's runs are never judged dead. */
function ownerDead(o: Owner): boolean {
  if (o.host !== SELF.host) return false
  if (!pidAlive(o.pid)) return true
  if (o.start === undefined) return false
  const now = o.pid === process.pid ? SELF.start : processStart(o.pid)
  return now !== undefined && now !== o.start
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH'
  }
}

// --- files beside the target ------------------------------------------------------------------

const ENTRY = /^\.(.+)\.glmtool-(tmp|old|lock)-(\d+)-([0-9a-z]+)(\.old)?$/
const LOCK = /^\.(.+)\.glmtool-lock$/
const BREAK = /^\.(.+)\.glmtool-break$/
const lockName = (base: string) => `.${base}.glmtool-lock`
const breakName = (base: string) => `.${base}.glmtool-break`
let serial = 0
const entryName = (base: string, kind: 'tmp' | 'old' | 'lock') =>
  `.${base}.glmtool-${kind}-${process.pid}-${Date.now().toString(36)}${(serial++).toString(36)}${Math.random().toString(36).slice(2, 6)}`

interface Journal extends Owner {
  glmtool: 'output-lock'
  target: string
  since: string
  /** building: temporary directories only; placing: the target was claimed empty (mkdir, or an empty file for a file target on a filesystem without hard links) and the build is being renamed onto it; swapping: the old target is (being) moved to `old`; swapped: the new output is in place, `old` is to be removed. */
  state: 'building' | 'placing' | 'swapping' | 'swapped'
  old?: string
}

function readJournal(path: string): Journal | undefined | 'unreadable' {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    return 'unreadable'
  }
  try {
    const j = JSON.parse(text)
    return j && j.glmtool === 'output-lock' && Number.isSafeInteger(j.pid) && typeof j.host === 'string' ? j as Journal : 'unreadable'
  } catch {
    return 'unreadable'
  }
}

/** Whether a glmtool that still runs holds `target`'s lock (it is building or replacing it); an unreadable lock counts as held. */
export function outputHeld(target: string): boolean {
  const j = readJournal(join(dirname(target), lockName(basename(target))))
  return j !== undefined && (j === 'unreadable' || !ownerDead(j))
}

const lexists = (p: string) => {
  try {
    lstatSync(p)
    return true
  } catch {
    return false
  }
}

function isEmptyDir(p: string): boolean {
  try {
    return lstatSync(p).isDirectory() && readdirSync(p).length === 0
  } catch {
    return false
  }
}

function isEmptyFile(p: string): boolean {
  try {
    const st = lstatSync(p)
    return st.isFile() && st.size === 0
  } catch {
    return false
  }
}

/** The empty placeholder a run in state `placing` claimed the target name with: an empty directory, or an empty file. */
function removePlaceholder(p: string): void {
  if (isEmptyDir(p)) rmdirSync(p)
  else if (isEmptyFile(p)) unlinkSync(p)
}

const IGNORABLE_DIR_SYNC = new Set(['EISDIR', 'EPERM', 'EINVAL', 'EBADF', 'ENOTSUP', 'EACCES'])

/** fsync a directory (its entries: renames, creations); filesystems and platforms that cannot are skipped. */
function fsyncDirSync(dir: string): void {
  let fd: number
  try {
    fd = openSync(dir, 'r')
  } catch (error) {
    if (IGNORABLE_DIR_SYNC.has((error as NodeJS.ErrnoException).code ?? '')) return
    throw error
  }
  try {
    fsyncSync(fd)
  } catch (error) {
    if (!IGNORABLE_DIR_SYNC.has((error as NodeJS.ErrnoException).code ?? '')) throw error
  } finally {
    closeSync(fd)
  }
}

/** fsync every file and directory under `dir`, then `dir` itself: the data is on disk before the rename makes it visible. */
export async function fsyncTree(dir: string): Promise<void> {
  for (const e of await readdir(dir, {withFileTypes: true})) {
    // Flushing gigabytes takes a while: Ctrl-C meanwhile still means "not written".
    if (interruptedBy !== undefined) throw interrupted()
    const p = join(dir, e.name)
    if (e.isDirectory()) {
      await fsyncTree(p)
    } else if (e.isFile()) {
      const fh = await open(p, 'r')
      try {
        await fh.sync()
      } finally {
        await fh.close()
      }
    }
  }
  fsyncDirSync(dir)
}

/**
 * Undo what a dead run left for `dir/base`, by its journal: the target is never left missing
 * while its previous version exists. The commit point of a run is the rename of its build onto
 * the target: before it, the old output is put back; after it, the old output is removed.
 */
function recoverJournal(dir: string, base: string, j: Journal): void {
  const target = join(dir, base)
  if (j.old && lexists(join(dir, j.old))) {
    // (After `swapped`, a missing target is one the user removed: the old output stays removed too.)
    if (j.state === 'swapping' && !lexists(target)) {
      renameSync(join(dir, j.old), target)
    } else {
      rmSync(join(dir, j.old), {recursive: true, force: true})
    }
  }
  // Claimed with mkdir (or an empty file), but the build was not yet renamed onto it: only ever empty.
  if (j.state === 'placing') removePlaceholder(target)
}

interface Entry {
  name: string
  kind: 'tmp' | 'old' | 'lock'
  pid: number
}

/**
 * Remove (or, for a previous output whose target is missing, put back) what dead glmtool runs
 * left in `dir`, for every target there: entries of a base whose lock's owner is dead, and
 * entries without a lock whose pid is dead. Only glmtool's own names are touched; a live
 * owner's entries (and another host's) are left alone.
 */
function sweepDeadRuns(dir: string): void {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return
  }
  const bases = new Map<string, {lock: boolean, entries: Entry[]}>()
  const of = (base: string) => bases.get(base) ?? (bases.set(base, {lock: false, entries: []}).get(base)!)
  for (const name of names) {
    const l = LOCK.exec(name)
    if (l) {
      of(l[1]).lock = true
      continue
    }
    if (BREAK.test(name)) {
      removeDeadBreak(join(dir, name))
      continue
    }
    const m = ENTRY.exec(name)
    if (m) of(m[1]).entries.push({name, kind: m[5] ? 'old' : m[2] as Entry['kind'], pid: Number(m[3])})
  }
  for (const [base, info] of bases) {
    if (info.lock) {
      const j = readJournal(join(dir, lockName(base)))
      if (j === 'unreadable') continue
      if (j !== undefined) {
        if (ownerDead(j)) breakDeadLock(dir, base, j, info.entries)
        continue
      }
    }
    removeDeadEntries(dir, base, info.entries, e => (e.pid === process.pid ? !ACTIVE_NAMES.has(e.name) : !pidAlive(e.pid)))
  }
}

function removeDeadEntries(dir: string, base: string, entries: readonly Entry[], dead: (e: Entry) => boolean): void {
  const target = join(dir, base)
  for (const e of entries) {
    if (ACTIVE_NAMES.has(e.name) || !dead(e)) continue
    const p = join(dir, e.name)
    try {
      if (e.kind === 'old' && !lexists(target)) {
        renameSync(p, target)
      } else {
        rmSync(p, {recursive: true, force: true})
      }
    } catch {
      // Another run cleaning the same leftover at the same moment: its job now.
    }
  }
}

/** A recovery guard whose owner was killed mid-recovery. */
function removeDeadBreak(path: string): void {
  let owner: Owner | undefined
  try {
    owner = JSON.parse(readFileSync(path, 'utf8')) as Owner
  } catch {
    return
  }
  if (owner && Number.isSafeInteger(owner.pid) && ownerDead(owner)) rmSync(path, {force: true})
}

/**
 * Recover and remove a dead owner's lock. Only the run that creates `.base.glmtool-break`
 * (O_EXCL) does it, and it re-reads the lock under that guard, so two runs starting together
 * never remove a lock that a third has just taken.
 */
function breakDeadLock(dir: string, base: string, dead: Journal, entries: readonly Entry[]): void {
  const brk = join(dir, breakName(base))
  try {
    writeFileSync(brk, JSON.stringify(SELF), {flag: 'wx'})
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    // Another run is recovering it, or one was killed doing so (the next sweep removes its guard and recovers).
    removeDeadBreak(brk)
    return
  }
  try {
    const again = readJournal(join(dir, lockName(base)))
    if (typeof again !== 'object' || again.pid !== dead.pid || again.start !== dead.start || again.since !== dead.since) return
    recoverJournal(dir, base, again)
    removeDeadEntries(dir, base, entries, e => e.pid === dead.pid || (e.pid !== process.pid && !pidAlive(e.pid)))
    unlinkSync(join(dir, lockName(base)))
    fsyncDirSync(dir)
  } finally {
    rmSync(brk, {force: true})
  }
}

// --- 3. Ctrl-C / SIGTERM ------------------------------------------------------------------------

/** Claims of this process, outermost first; names of their temporary entries. */
const ACTIVE: OutputClaim[] = []
const ACTIVE_NAMES = new Set<string>()
let interruptedBy: NodeJS.Signals | undefined

function onSignal(signal: NodeJS.Signals): void {
  const outer = ACTIVE[0]
  if (interruptedBy === undefined) {
    interruptedBy = signal
    process.stderr.write(`\nglmtool: interrupted (${signal}); stopping at the next safe point (${signal === 'SIGINT' ? 'Ctrl-C' : signal} again stops at once)\n`)
    return
  }
  // Second signal: stop now. Synchronous, so no build code runs after its directory is gone.
  const message = outer ? interruptedMessage(signal, outer) : `interrupted (${signal})`
  for (const c of [...ACTIVE].reverse()) c.release()
  process.stderr.write(`glmtool: ${message}\n`)
  process.exit(signal === 'SIGINT' ? 130 : 143)
}

function interruptedMessage(signal: NodeJS.Signals, outer: OutputClaim | undefined): string {
  if (!outer) return `interrupted (${signal})`
  return `interrupted (${signal}); removed the partial output, ${outer.target} was not written${outer.existed ? ` (the existing ${outer.target} is unchanged)` : ''}`
}

function interrupted(): InterruptedError {
  return new InterruptedError(interruptedBy!, interruptedMessage(interruptedBy!, ACTIVE[0]))
}

/**
 * An interruption point: builds call it between units of work (a tensor, a sequence); it throws
 * InterruptedError once Ctrl-C / SIGTERM was received, so the build unwinds through its own
 * `finally` blocks and the claim removes its temporary directories once.
 */
export async function checkpoint(): Promise<void> {
  await testHook('checkpoint')
  if (interruptedBy !== undefined) throw interrupted()
}

// --- test-only hooks ------------------------------------------------------------------------------

/**
 * TEST ONLY. GLMTOOL_TEST_HOOK=<step>:<pause|kill> makes the first arrival at <step> either
 * SIGKILL this process or write GLMTOOL_TEST_HOOK_DIR/<step>.reached and wait until
 * <step>.go appears there (or a signal arrives). Steps: checkpoint (the build's first
 * interruption point), commit (build whole and fsynced, before the rename), and, kill only
 * (they are inside the synchronous commit), placing (target claimed empty, before the build
 * is renamed onto it), swap-aside (old target moved aside, new not yet in place), swapped (new
 * in place, old not yet removed; for a file target: the new file in place, its temporary name
 * not yet removed).
 */
const firedHooks = new Set<string>()
function hookFor(step: string): 'pause' | 'kill' | undefined {
  const spec = process.env.GLMTOOL_TEST_HOOK
  if (!spec || firedHooks.has(step)) return undefined
  const [s, action] = spec.split(':')
  if (s !== step || (action !== 'pause' && action !== 'kill')) return undefined
  firedHooks.add(step)
  return action
}

async function testHook(step: string): Promise<void> {
  const action = hookFor(step)
  if (action === 'kill') process.kill(process.pid, 'SIGKILL')
  if (action !== 'pause') return
  const dir = process.env.GLMTOOL_TEST_HOOK_DIR ?? '.'
  writeFileSync(join(dir, `${step}.reached`), String(process.pid))
  while (!existsSync(join(dir, `${step}.go`)) && interruptedBy === undefined) await new Promise(r => setTimeout(r, 10))
}

function testHookSync(step: string): void {
  if (hookFor(step) === 'kill') process.kill(process.pid, 'SIGKILL')
}

// --- the claim ---------------------------------------------------------------------------------

/** A target this run owns (its lock held) from the start of the command to its end. */
export class OutputClaim {
  readonly target: string
  /** Whether the target existed when the run started (a --force replace). */
  readonly existed: boolean
  readonly kind: 'directory' | 'file'
  private readonly out: string
  private readonly dir: string
  private readonly base: string
  private readonly force: boolean
  private readonly temps: string[] = []
  private journal: Journal
  private released = false

  private constructor(target: string, force: boolean, journal: Journal, existed: boolean, kind: 'directory' | 'file') {
    this.target = target
    this.kind = kind
    this.out = resolve(target)
    this.dir = dirname(this.out)
    this.base = basename(this.out)
    this.force = force
    this.journal = journal
    this.existed = existed
  }

  /**
   * Everything checked before any work: the inputs, dead runs' leftovers, the lock, and an
   * existing target without --force.
   */
  static async claim(target: string, opts: OutputOptions): Promise<OutputClaim> {
    assertOutputApart(target, opts.inputs ?? [])
    const out = resolve(target)
    const dir = dirname(out)
    const base = basename(out)
    if (base === '' || base === '.' || base === '..') throw new UsageError(`--out ${target}: not a directory name`)
    await mkdir(dir, {recursive: true})
    const journal: Journal = {glmtool: 'output-lock', ...SELF, target: base, since: new Date().toISOString(), state: 'building'}
    const lock = join(dir, lockName(base))
    for (let attempt = 0; ; attempt++) {
      sweepDeadRuns(dir)
      if (createLock(dir, base, lock, journal)) break
      const holder = readJournal(lock)
      // Released or found dead meanwhile: sweep and try again (a few times: other runs race for it too).
      if ((holder === undefined || (holder !== 'unreadable' && ownerDead(holder))) && attempt < 4) continue
      const who = typeof holder !== 'object' ? 'another glmtool run' : `another glmtool run (pid ${holder.pid}${holder.host !== SELF.host ? ` on ${holder.host}` : ''}, since ${holder.since})`
      throw new GlmtoolError('output-locked', `output ${target} is being written by ${who}; wait for it to finish or stop it (if no glmtool run is writing it, remove ${lock})`)
    }
    const claim = new OutputClaim(target, opts.force, journal, lexists(out), opts.kind ?? 'directory')
    if (ACTIVE.length === 0) {
      process.on('SIGINT', onSignal)
      process.on('SIGTERM', onSignal)
    }
    ACTIVE.push(claim)
    if (claim.existed && !opts.force) {
      claim.release()
      throw new UsageError(`output ${target} already exists; pass --force to replace it`)
    }
    // A file target replaces only a file (or a symlink, itself replaced); a directory or device there is not ours to remove.
    const st = claim.kind === 'file' ? statSync(out, {throwIfNoEntry: false}) : undefined
    if (st && !st.isFile()) {
      claim.release()
      throw new UsageError(`output ${target} exists and is not a file; choose another --out`)
    }
    return claim
  }

  /** A fresh directory beside the target (same filesystem), removed when the claim is released. */
  async tempDir(): Promise<string> {
    const name = entryName(this.base, 'tmp')
    ACTIVE_NAMES.add(name)
    this.temps.push(name)
    await mkdir(join(this.dir, name))
    return join(this.dir, name)
  }

  /**
   * Build into a temporary directory, then put it in place: whole, fsynced, never replacing
   * anything without --force, never leaving the target missing.
   */
  async write<T>(build: (tmpDir: string) => Promise<T>): Promise<T> {
    if (this.kind !== 'directory') throw new Error(`output ${this.target}: write() is for a directory target; use writeFile()`)
    return this.interruptible(async () => {
      const tmp = await this.tempDir()
      const result = await build(tmp)
      await checkpoint()
      await fsyncTree(tmp)
      await testHook('commit')
      if (interruptedBy !== undefined) throw interrupted()
      this.commit(tmp)
      return result
    })
  }

  /**
   * Build one file (a file target: `kind: 'file'`) through `fh`, a new temporary file beside the
   * target, then put it in place with the same guarantees as `write` (see commitFile). `fh` is
   * synced and closed here; the build must not close it.
   */
  async writeFile<T>(build: (fh: FileHandle) => Promise<T>): Promise<T> {
    if (this.kind !== 'file') throw new Error(`output ${this.target}: writeFile() is for a file target (claimed with kind 'file')`)
    return this.interruptible(async () => {
      const name = entryName(this.base, 'tmp')
      ACTIVE_NAMES.add(name)
      this.temps.push(name)
      const tmp = join(this.dir, name)
      const fh = await open(tmp, 'wx')
      let result: T
      let synced = false
      try {
        result = await build(fh)
        await checkpoint()
        await fh.sync()
        synced = true
      } finally {
        // After a failure the build's error is the one to report, not a failing close.
        await (synced ? fh.close() : fh.close().catch(() => undefined))
      }
      await testHook('commit')
      if (interruptedBy !== undefined) throw interrupted()
      this.commitFile(tmp)
      return result
    })
  }

  private async interruptible<T>(run: () => Promise<T>): Promise<T> {
    try {
      return await run()
    } catch (error) {
      // A build may wrap errors; once interrupted, the interruption is the cause.
      if (interruptedBy !== undefined && !(error instanceof InterruptedError) && !this.committed) throw interrupted()
      throw error
    }
  }

  private committed = false

  /**
   * The rename, synchronous so that no signal handler runs in the middle of it.
   *
   * No-replace: Node has no renameat2(RENAME_NOREPLACE), and rename(2) of a directory onto an
   * existing EMPTY directory replaces it. So the target name is first claimed with mkdir(2),
   * which is atomic and fails with EEXIST on anything there, and the build is renamed onto
   * that empty directory, which is ours; if anyone wrote into it meanwhile, the rename fails
   * with ENOTEMPTY and their files are left alone. (A lock file alone would only keep out
   * other glmtool runs, and an existence check before the rename would race.)
   *
   * --force replace: there is no atomic exchange (RENAME_EXCHANGE) either, so it is two
   * renames, old aside and new in, with the journal in the lock file saying which: a run
   * killed between them leaves the old output beside the target and the journal; the next run
   * to that directory puts the old output back (recoverJournal). SIGINT/SIGTERM cannot land
   * between them (handlers run only after this returns).
   */
  private commit(tmp: string): void {
    for (let attempt = 0; ; attempt++) {
      if (!lexists(this.out)) {
        this.writeJournal({state: 'placing'})
        try {
          mkdirSync(this.out)
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'EEXIST' && attempt < 2) continue
          throw error
        }
        testHookSync('placing')
        try {
          renameSync(tmp, this.out)
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code
          if (code === 'ENOTEMPTY' || code === 'EEXIST') {
            throw new GlmtoolError('output-appeared', `output ${this.target} was filled by another program while glmtool was writing it; left it as it is, the new output was not written`)
          }
          if (isEmptyDir(this.out)) rmdirSync(this.out)
          throw error
        }
        this.committed = true
        fsyncDirSync(this.dir)
        return
      }
      if (!this.force) {
        throw new UsageError(`output ${this.target} appeared while glmtool was writing it (it did not exist when the run started); left it as it is, pass --force to replace it`)
      }
      const old = entryName(this.base, 'old')
      ACTIVE_NAMES.add(old)
      this.writeJournal({state: 'swapping', old})
      renameSync(this.out, join(this.dir, old))
      testHookSync('swap-aside')
      try {
        renameSync(tmp, this.out)
      } catch (error) {
        if (!lexists(this.out)) renameSync(join(this.dir, old), this.out)
        throw error
      }
      this.committed = true
      fsyncDirSync(this.dir)
      this.writeJournal({state: 'swapped'})
      testHookSync('swapped')
      rmSync(join(this.dir, old), {recursive: true, force: true})
      ACTIVE_NAMES.delete(old)
      return
    }
  }

  /**
   * Put a finished file in place; synchronous, like `commit`.
   *
   * No-replace: link(2) gives the file its target name atomically and fails with EEXIST on
   * anything there, so a file (or anything) that appeared meanwhile is left alone; the temporary
   * name is then removed. Filesystems without hard links claim the name with an empty file
   * (O_EXCL, journal state `placing`, undone by the next run if this one dies) and rename onto it.
   *
   * --force replace: rename(2) onto an existing file replaces it atomically, so the target is
   * the previous file or the new one at every moment, never missing: no old copy aside, no swap
   * journal. (A directory that appeared at the target is not replaced: rename fails on it.)
   */
  private commitFile(tmp: string): void {
    const appeared = (error: unknown) => {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'EEXIST') return new UsageError(`output ${this.target} appeared while glmtool was writing it (it did not exist when the run started); left it as it is, pass --force to replace it`)
      if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'ENOTDIR') return new GlmtoolError('output-appeared', `output ${this.target} became a directory while glmtool was writing it; left it as it is, the new output was not written`)
      return error
    }
    if (this.force) {
      try {
        renameSync(tmp, this.out)
      } catch (error) {
        throw appeared(error)
      }
      this.committed = true
      fsyncDirSync(this.dir)
      testHookSync('swapped')
      return
    }
    try {
      linkSync(tmp, this.out)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV') throw appeared(error)
      this.writeJournal({state: 'placing'})
      try {
        closeSync(openSync(this.out, 'wx'))
      } catch (e) {
        throw appeared(e)
      }
      testHookSync('placing')
      renameSync(tmp, this.out)
    }
    this.committed = true
    fsyncDirSync(this.dir)
    testHookSync('swapped')
    rmSync(tmp, {force: true})
  }

  /** Rewrite the journal atomically: a new file renamed over the lock (ours), fsynced with its directory. */
  private writeJournal(change: Partial<Journal>): void {
    this.journal = {...this.journal, ...change}
    const staging = join(this.dir, entryName(this.base, 'lock'))
    writeSynced(staging, this.journal)
    renameSync(staging, join(this.dir, lockName(this.base)))
    fsyncDirSync(this.dir)
  }

  /**
   * Remove the temporary directories, put back a previous output if a replace was cut short
   * (a second Ctrl-C mid-commit), and give up the lock. Synchronous (a signal handler calls it);
   * safe to call twice.
   */
  release(): void {
    if (this.released) return
    this.released = true
    try {
      for (const name of this.temps) rmSync(join(this.dir, name), {recursive: true, force: true})
      // Nothing to undo once the build is in place; else a replace cut short is put back.
      if (!this.committed) recoverJournal(this.dir, this.base, this.journal)
      rmSync(join(this.dir, lockName(this.base)), {force: true})
    } finally {
      for (const name of this.temps) ACTIVE_NAMES.delete(name)
      if (this.journal.old) ACTIVE_NAMES.delete(this.journal.old)
      const i = ACTIVE.indexOf(this)
      if (i >= 0) ACTIVE.splice(i, 1)
      if (ACTIVE.length === 0) {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
      }
    }
  }
}

function writeSynced(path: string, journal: Journal): void {
  const fd = openSync(path, 'wx')
  try {
    writeFileSync(fd, JSON.stringify(journal) + '\n')
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/**
 * Take the lock: the journal is written whole to a staging file, then link(2)ed to the lock
 * name, which fails with EEXIST when the lock is held (atomic, and a reader never sees a
 * half-written lock). Filesystems without hard links fall back to O_EXCL creation.
 */
function createLock(dir: string, base: string, lock: string, journal: Journal): boolean {
  const staging = join(dir, entryName(base, 'lock'))
  writeSynced(staging, journal)
  try {
    linkSync(staging, lock)
    return true
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EEXIST') return false
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV') throw error
    try {
      writeFileSync(lock, JSON.stringify(journal) + '\n', {flag: 'wx'})
      return true
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false
      throw e
    }
  } finally {
    rmSync(staging, {force: true})
    fsyncDirSync(dir)
  }
}

/** Claim `target` (a directory, or with `kind: 'file'` one file) for this run (see OutputClaim.claim); release it in a `finally`. */
export function claimOutput(target: string, opts: OutputOptions): Promise<OutputClaim> {
  return OutputClaim.claim(target, opts)
}

/**
 * Write a model directory so that it appears whole or not at all (claim, build into a
 * temporary directory beside the target, put in place, release). `opts` may be the --force
 * flag alone.
 */
export async function writeOutputDir<T>(target: string, opts: OutputOptions | boolean, build: (tmpDir: string) => Promise<T>): Promise<T> {
  const claim = await claimOutput(target, typeof opts === 'boolean' ? {force: opts} : opts)
  try {
    return await claim.write(build)
  } finally {
    claim.release()
  }
}

/** Run `open` (an input model, an adapter) under a claim, releasing the claim if it fails. */
export async function openClaimed<T>(claim: OutputClaim, open: () => Promise<T>): Promise<T> {
  try {
    return await open()
  } catch (error) {
    claim.release()
    throw error
  }
}

/**
 * Write one file so that it appears whole or not at all, under the same claim, lock, clean-up
 * and Ctrl-C handling as a directory (claim with `kind: 'file'`, build through a temporary file
 * beside the target, put in place, release).
 */
export async function writeOutputFile<T>(target: string, opts: Omit<OutputOptions, 'kind'>, build: (fh: FileHandle) => Promise<T>): Promise<T> {
  const claim = await claimOutput(target, {...opts, kind: 'file'})
  try {
    return await claim.writeFile(build)
  } finally {
    claim.release()
  }
}
