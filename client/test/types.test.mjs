// The hand-written stellar-client.d.ts against typical (and wrong) uses: test/types/usage.ts
// must compile under `strict`, its `@ts-expect-error` lines must fail.
import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('stellar-client.d.ts type-checks typical uses and rejects misuses', () => {
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
  const project = fileURLToPath(new URL('./types', import.meta.url));
  execFileSync(process.execPath, [tsc, '-p', project], { stdio: 'inherit' });
});
