import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../../cli/base-command.js'
import {formatBytes} from '../../cli/progress.js'
import {UsageError} from '../../errors.js'
import {cacheRoot, clearCache} from '../../pipelines/model-cache.js'

export default class CacheClear extends BaseCommand {
  static override summary = 'Remove converted models from glmtool\'s cache'
  static override description = 'Removes the entries named by key (or a unique prefix of one, as `glmtool cache ls` shows them), or with --stale the entries that will never be used again (their model changed or is gone), or with --all every entry. Only cache entries are removed; an entry a running glmtool is converting or reading is left, and said so. The next chat on a removed model converts it again.'
  static override examples = ['<%= config.bin %> cache clear --stale', '<%= config.bin %> cache clear 3f9a', '<%= config.bin %> cache clear --all']
  static override strict = false
  static override args = {key: Args.string({description: 'an entry key (repeatable), as `glmtool cache ls` shows it'})}
  static override flags = {
    stale: Flags.boolean({description: 'remove only stale, orphaned and unrecorded entries', exclusive: ['all']}),
    all: Flags.boolean({description: 'remove every entry', exclusive: ['stale']}),
  }

  async run() {
    const {argv, flags} = await this.parse(CacheClear)
    const keys = argv as string[]
    if (!keys.length && !flags.stale && !flags.all) throw new UsageError('say what to remove: entry keys, --stale or --all (see `glmtool cache ls`)')
    if (keys.length && (flags.stale || flags.all)) throw new UsageError('give entry keys or --stale/--all, not both')
    const r = clearCache({keys, stale: flags.stale})
    for (const e of r.busy) this.note(`${e.dir}: left, a running glmtool is using it`)
    if (!this.jsonEnabled()) this.log(`removed ${r.removed.length} entr${r.removed.length === 1 ? 'y' : 'ies'}, ${formatBytes(r.bytes)}, from ${cacheRoot()}`)
    return {root: cacheRoot(), removed: r.removed, busy: r.busy, bytes: r.bytes}
  }
}
