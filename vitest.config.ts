import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The CLI tests spawn `node bin/run.js`; two cores, so keep workers modest.
    maxWorkers: 2,
  },
})
