// Prints the suite's closing line in the plain form CI reads ("N passed, N failed, N skipped"),
// from vitest's JSON report.
import {readFileSync} from 'node:fs'

const r = JSON.parse(readFileSync(process.argv[2] ?? 'test-results.json', 'utf8'))
const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0)
console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`)
process.exit(r.numFailedTests > 0 || r.numTotalTests === 0 ? 1 : 0)
