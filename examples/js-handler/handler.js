// `acme/jscheck:1`: a sandstep update handler in JavaScript, built with componentize-js (jco).
//
// It checks a step against what it is given: is-installed answers from the step's
// installedCriteria and the selected component's version (a child update's step) or, without a
// component, from handlerProperties.currentVersion; install reports the step's files, which the
// host fetched and verified; apply makes the version current. The world is
// `sandstep:handler/handler` (logging and progress): componentize-js offers no file system to the
// script, so a JS handler works from its context and the host's answers.
//
// Build:
//   componentize-js handler.js --wit ../../wit --world-name sandstep:handler/handler \
//     -d http fetch-event -o jscheck.wasm   (no HTTP or fetch: sandstep offers handlers no network)

import { log, progress } from 'sandstep:handler/host@0.1.0';

const INSTALLED = 900, NOT_INSTALLED = 901, DOWNLOAD_SUCCESS = 500, BACKUP_UNSUPPORTED = 1001;
const INSTALL_SUCCESS = 600, APPLY_SUCCESS = 700, CANCEL_SUCCESS = 800, RESTORE_UNSUPPORTED = 1101;
// The handler's own failure code: facility 3 (content handler), component 32 (custom).
const ERC_BAD_PROPERTIES = 0x32000001;

const done = (resultCode, resultDetails = '') => ({ resultCode, extendedResultCode: 0, resultDetails });
const failed = (extendedResultCode, resultDetails) => ({ resultCode: 0, extendedResultCode, resultDetails });

function properties(ctx) {
  try {
    return JSON.parse(ctx.handlerProperties || '{}');
  } catch (e) {
    return null;
  }
}

function running(ctx, props) {
  return ctx.selectedComponent ? ctx.selectedComponent.version : props.currentVersion;
}

export const lifecycle = {
  isInstalled(ctx) {
    const props = properties(ctx);
    if (props === null) return failed(ERC_BAD_PROPERTIES, 'handlerProperties is not JSON');
    if (!ctx.installedCriteria) return failed(ERC_BAD_PROPERTIES, 'installedCriteria is required');
    const have = running(ctx, props);
    return have === ctx.installedCriteria
      ? done(INSTALLED)
      : done(NOT_INSTALLED, `running ${have ?? 'an unknown version'}, want ${ctx.installedCriteria}`);
  },
  download(ctx) {
    return done(DOWNLOAD_SUCCESS);
  },
  backup(ctx) {
    return done(BACKUP_UNSUPPORTED);
  },
  install(ctx) {
    const files = ctx.files.map((f) => `${f.name} (${f.size} bytes)`);
    progress(50, `checking ${files.length} file(s)`);
    log('info', `files: ${files.join(', ')}`);
    return done(INSTALL_SUCCESS, `${files.length} file(s) verified: ${files.join(', ')}`);
  },
  apply(ctx) {
    return done(APPLY_SUCCESS, `${ctx.installedCriteria} is current`);
  },
  cancel(ctx) {
    return done(CANCEL_SUCCESS);
  },
  restore(ctx) {
    return done(RESTORE_UNSUPPORTED);
  },
};
