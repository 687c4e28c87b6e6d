/**
 * One backend serves one request at a time: requests wait in a FIFO queue of bounded length.
 * A waiting request whose client has left is taken out without running.
 */
export interface QueuedJob {
  /** Runs the job; the queue starts the next one when the promise settles. */
  run(): Promise<void>
}

export class FifoQueue {
  private readonly waiting: QueuedJob[] = []
  private running: QueuedJob | undefined
  private idleWaiters: (() => void)[] = []

  constructor(readonly maxWaiting: number) {}

  /** Requests waiting, not counting the one running. */
  get length(): number {
    return this.waiting.length
  }

  get busy(): boolean {
    return this.running !== undefined
  }

  /** false when the queue is full (the caller answers 429). */
  push(job: QueuedJob): boolean {
    if (this.running && this.waiting.length >= this.maxWaiting) return false
    this.waiting.push(job)
    this.pump()
    return true
  }

  /** Take a waiting job out (its client left); false when it already runs or ran. */
  remove(job: QueuedJob): boolean {
    const i = this.waiting.indexOf(job)
    if (i < 0) return false
    this.waiting.splice(i, 1)
    return true
  }

  /** Drop every waiting job; returns them so the caller can answer them. */
  drain(): QueuedJob[] {
    return this.waiting.splice(0)
  }

  /** Resolves when nothing runs and nothing waits. */
  idle(): Promise<void> {
    if (!this.running && this.waiting.length === 0) return Promise.resolve()
    return new Promise(resolve => this.idleWaiters.push(resolve))
  }

  private pump(): void {
    if (this.running) return
    const job = this.waiting.shift()
    if (!job) {
      const waiters = this.idleWaiters
      this.idleWaiters = []
      for (const w of waiters) w()
      return
    }
    this.running = job
    job.run().catch(() => {}).finally(() => {
      this.running = undefined
      this.pump()
    })
  }
}
