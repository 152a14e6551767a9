// Node.js module hooks for native tests (`sandstep handler test`: node --import
// ./sandstep-hooks.js --test): the component's imports (`sandstep:handler/...`, `wasi:...`)
// resolve to sandstep-testing.js, which stands in for the host.
import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';

if (isMainThread) register(import.meta.url);

const harness = new URL('./sandstep-testing.js', import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (/^(sandstep|wasi):/.test(specifier)) return { url: harness, shortCircuit: true };
  return next(specifier, context);
}
