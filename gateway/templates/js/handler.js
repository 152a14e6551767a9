// `@ID@`: a sandstep update handler in JavaScript (componentize-js).
//
// It installs the step file named by handlerProperties.fileName into /config, a directory the
// gateway's policy grants this handler (gateway.toml: `dirs`), atomically (a reader sees the old
// file or the new one), and records handlerProperties.installedCriteria in /state, so
// is-installed can tell whether there is anything to do. backup keeps the current file in /work,
// restore puts it back, cancel removes a half-written file.
//
// sandstep.js beside this file is the kit: typed result codes, Failure, the sandbox's files
// (`fs`, through WASI), and the context; handler.test.js runs the calls natively.
// `sandstep handler build` builds the component (the world in wit/world.wit).

import {
  Applied, BackedUp, Cancelled, Failure, Installed, IsInstalled, Restored, fs, handler, log, progress,
} from './sandstep.js';

const CONFIG = '/config'; // granted by the gateway's policy (gateway.toml)
const RECORD = 'installed-version'; // under /state
const NOT_A_PLAIN_NAME = 1; // the handler's own failure code: extended code 0x32000001

function props(ctx) {
  const name = ctx.property('fileName');
  const criteria = ctx.property('installedCriteria');
  if (name.includes('/') || name.startsWith('.')) {
    throw Failure.vendor(NOT_A_PLAIN_NAME, `handlerProperties.fileName \`${name}\` is not a plain file name`);
  }
  return { name, criteria };
}

export const lifecycle = handler({
  isInstalled(ctx) {
    const { criteria } = props(ctx);
    const record = ctx.statePath(RECORD);
    const have = fs.exists(record) ? fs.readText(record) : '';
    return have === criteria
      ? IsInstalled.INSTALLED.details(`${criteria} is installed`)
      : IsInstalled.NOT_INSTALLED.details(`${criteria} is not installed`);
  },
  backup(ctx) {
    const { name } = props(ctx);
    const current = ctx.granted(CONFIG, name);
    if (!fs.exists(current)) return BackedUp.UNSUPPORTED.details('nothing installed yet');
    fs.copyFile(current, ctx.workPath('backup'));
    return BackedUp.SUCCESS;
  },
  install(ctx) {
    const { name } = props(ctx);
    const file = ctx.file(name);
    progress(10, `installing ${name} (${file.size} bytes)`);
    fs.writeAtomically(ctx.granted(CONFIG, name), fs.readFile(file.path));
    log('info', `${name} installed into ${CONFIG}`);
    return Installed.SUCCESS.details(`${name} installed`);
  },
  apply(ctx) {
    const { criteria } = props(ctx);
    fs.writeAtomically(ctx.statePath(RECORD), criteria);
    return Applied.SUCCESS.details(`${criteria} is active`);
  },
  cancel(ctx) {
    const { name } = props(ctx);
    const staged = `${ctx.granted(CONFIG, name)}.sandstep-new`;
    if (!fs.exists(staged)) return Cancelled.SUCCESS.details('nothing to clean up');
    fs.remove(staged);
    return Cancelled.SUCCESS.details(`removed the half-written ${name}`);
  },
  restore(ctx) {
    const { name } = props(ctx);
    const backup = ctx.workPath('backup');
    if (!fs.exists(backup)) return Restored.UNSUPPORTED.details('no backup was taken');
    fs.copyFile(backup, ctx.granted(CONFIG, name));
    return Restored.SUCCESS;
  },
});
