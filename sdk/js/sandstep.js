// sandstep's JavaScript handler kit: typed result codes, failures, the sandbox's files, and the
// context a call sees. A handler module exports `lifecycle = handler({ ...calls })`:
//
//   export const lifecycle = handler({
//     isInstalled(ctx) { return IsInstalled.NOT_INSTALLED.details('nothing yet'); },
//     install(ctx) { fs.writeAtomically(ctx.granted('/config', 'app.conf'), ctx.readFile(...)); ... },
//     apply(ctx) { return Applied.SUCCESS; },
//   });
//
// download, backup, cancel and restore have defaults (success, unsupported). A code of another
// call (Installed.SUCCESS from apply) is refused, as the Rust SDK's types refuse it. Throwing a
// Failure ends the call with result 0 and its extended code; a file-system error carries its
// errno as the extended code (facility 0, WASI's numbering, as the Rust and Python kits report
// it), so a missing directory reads 0x0000002C (ENOENT), not one catch-all vendor code.
//
// Files: `fs` reads and writes the sandbox's directories (/payload, /work, /state and the ones
// the gateway's policy grants, such as /config) through WASI's file system. Natively
// (`sandstep handler test`), sandstep-testing.js stands in for the host and maps those
// directories to the test's own.

import { log as hostLog, progress as hostProgress } from 'sandstep:handler/host@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

// Extended result codes the kit itself uses (facility 11, component 0xA0), as the Rust SDK.
export const SDK_INVALID_PROPERTIES = 0xba000001;
export const SDK_MISSING_FILE = 0xba000002;
export const SDK_NOT_GRANTED = 0xba000004;
export const SDK_WRONG_CODE = 0xba000005;

/** A handler's own extended code: facility 3 (content handler), component 32, `code`. */
export const vendorCode = (code) => (0x32000000 | (code & 0xfffff)) >>> 0;

class Code {
  constructor(call, name, value) {
    Object.assign(this, { call, name, value });
    Object.freeze(this);
  }
  /** This code with details: `Installed.SUCCESS.details('app.conf installed')`. */
  details(text) {
    return { code: this, text: String(text) };
  }
  toString() {
    return `${this.call}.${this.name} (${this.value})`;
  }
}

function codes(call, table) {
  return Object.freeze(Object.fromEntries(Object.entries(table).map(([n, v]) => [n, new Code(call, n, v)])));
}

export const IsInstalled = codes('IsInstalled', { INSTALLED: 900, NOT_INSTALLED: 901 });
export const Downloaded = codes('Downloaded', {
  SUCCESS: 500, SKIPPED_FILE_EXISTS: 502, SKIPPED_UPDATE_ALREADY_INSTALLED: 503, SKIPPED_NO_MATCHING_COMPONENTS: 504,
});
export const BackedUp = codes('BackedUp', { SUCCESS: 1000, UNSUPPORTED: 1001 });
export const Installed = codes('Installed', {
  SUCCESS: 600, SKIPPED_UPDATE_ALREADY_INSTALLED: 603, SKIPPED_NO_MATCHING_COMPONENTS: 604,
  REBOOT_NOW: 605, REBOOT_AFTER_STEPS: 606, AGENT_RESTART_NOW: 607, AGENT_RESTART_AFTER_STEPS: 608,
});
export const Applied = codes('Applied', {
  SUCCESS: 700, REBOOT_NOW: 705, REBOOT_AFTER_STEPS: 706, AGENT_RESTART_NOW: 707, AGENT_RESTART_AFTER_STEPS: 708,
});
export const Cancelled = codes('Cancelled', { SUCCESS: 800, UNABLE_TO_CANCEL: 801 });
export const Restored = codes('Restored', {
  SUCCESS: 1100, UNSUPPORTED: 1101, REBOOT_NOW: 1105, REBOOT_AFTER_STEPS: 1106,
  AGENT_RESTART_NOW: 1107, AGENT_RESTART_AFTER_STEPS: 1108,
});

/** A failed call: result code 0 (or -1 for `Failure.cancelled`) with an extended code. */
export class Failure extends Error {
  constructor(extendedCode, details, resultCode = 0) {
    super(details);
    Object.assign(this, { extendedCode: extendedCode >>> 0, details: String(details), resultCode });
  }
  static vendor(code, details) {
    return new Failure(vendorCode(code), details);
  }
  static cancelled(details) {
    return new Failure(0, details, -1);
  }
}

// WASI's errno numbers (wasi-libc) for wasi:filesystem's error codes, as a Rust or Python handler
// reports the same error.
const ERRNO = {
  access: 2, 'would-block': 6, already: 7, 'bad-descriptor': 8, busy: 10, deadlock: 16, quota: 19, exist: 20,
  'file-too-large': 22, 'illegal-byte-sequence': 25, 'in-progress': 26, interrupted: 27, invalid: 28, io: 29,
  'is-directory': 31, loop: 32, 'too-many-links': 34, 'message-size': 35, 'name-too-long': 37, 'no-device': 43,
  'no-entry': 44, 'no-lock': 46, 'insufficient-memory': 48, 'insufficient-space': 51, 'not-directory': 54,
  'not-empty': 55, 'not-recoverable': 56, unsupported: 58, 'no-tty': 59, 'no-such-device': 60, overflow: 61,
  'not-permitted': 63, pipe: 64, 'read-only': 69, 'invalid-seek': 70, 'text-file-busy': 74, 'cross-device': 75,
};

/** A file-system error: the path, WASI's error code and its errno (the extended code). */
export class FsError extends Failure {
  constructor(path, code) {
    super(ERRNO[code] ?? 29, `${path}: ${code}`);
    Object.assign(this, { path, code });
  }
}

function fsCall(path, f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof Failure) throw e;
    const code = e?.payload ?? e?.val ?? e?.message ?? String(e);
    throw new FsError(path, typeof code === 'string' ? code : String(code));
  }
}

/** The preopened directory `path` lies in, and the rest of the path. */
function resolve(path) {
  let best = null;
  for (const [dir, guest] of getDirectories()) {
    const inside = path === guest || path.startsWith(guest.endsWith('/') ? guest : `${guest}/`);
    if (inside && (!best || guest.length > best[1].length)) best = [dir, guest];
  }
  if (!best) throw new FsError(path, 'no-entry');
  const rest = path.slice(best[1].length).replace(/^\/+/, '');
  return [best[0], rest === '' ? '.' : rest];
}

const toBytes = (data) => (typeof data === 'string' ? new TextEncoder().encode(data) : data);

/** The sandbox's files, through WASI (the directories the host preopened). */
export const fs = {
  /** The whole file as bytes. */
  readFile(path) {
    const [dir, rel] = resolve(path);
    return fsCall(path, () => {
      const fd = dir.openAt({}, rel, {}, { read: true });
      const parts = [];
      let offset = 0n;
      for (;;) {
        const [chunk, eof] = fd.read(65536n, offset);
        parts.push(chunk);
        offset += BigInt(chunk.length);
        if (eof || chunk.length === 0) break;
      }
      const out = new Uint8Array(Number(offset));
      let at = 0;
      for (const p of parts) out.set(p, (at += p.length) - p.length);
      return out;
    });
  },
  /** The whole file as UTF-8 text. */
  readText(path) {
    return new TextDecoder().decode(fs.readFile(path));
  },
  /** Whether something exists at `path`. */
  exists(path) {
    const [dir, rel] = resolve(path);
    try {
      dir.statAt({}, rel);
      return true;
    } catch (e) {
      if ((e?.payload ?? e?.message) === 'no-entry') return false;
      return fsCall(path, () => { throw e; });
    }
  },
  /** Writes `path` so a reader sees the old content or the new, never half: a temporary file
   * beside it (`<path>.sandstep-new`), synced, then renamed over it. */
  writeAtomically(path, data) {
    const bytes = toBytes(data);
    const [dir, rel] = resolve(path);
    const tmp = `${rel}.sandstep-new`;
    fsCall(path, () => {
      const fd = dir.openAt({}, tmp, { create: true, truncate: true }, { write: true });
      let offset = 0;
      while (offset < bytes.length) offset += Number(fd.write(bytes.subarray(offset), BigInt(offset)));
      fd.sync();
      dir.renameAt(tmp, dir, rel);
    });
  },
  /** Removes a file. */
  remove(path) {
    const [dir, rel] = resolve(path);
    fsCall(path, () => dir.unlinkFileAt(rel));
  },
  /** Copies a file (through memory: handler files are configs and scripts, not images). */
  copyFile(from, to) {
    fs.writeAtomically(to, fs.readFile(from));
  },
};

export function log(level, message) {
  hostLog(level, message);
}

export function progress(percent, message = '') {
  hostProgress(percent, message);
}

const join = (base, parts) => [base, ...parts].join('/');

/** What a call sees: the step, its properties and files, and the sandbox's paths. */
export class Context {
  constructor(raw) {
    Object.assign(this, raw);
    this.handlerProperties = raw.handlerProperties || '{}';
  }
  /** handlerProperties as an object; not a JSON object fails with SDK_INVALID_PROPERTIES. */
  properties() {
    let p;
    try {
      p = JSON.parse(this.handlerProperties);
    } catch (e) {
      throw new Failure(SDK_INVALID_PROPERTIES, `handlerProperties: ${e.message}`);
    }
    if (p === null || typeof p !== 'object' || Array.isArray(p)) {
      throw new Failure(SDK_INVALID_PROPERTIES, 'handlerProperties is not a JSON object');
    }
    return p;
  }
  /** One handlerProperties member; missing fails naming it (SDK_INVALID_PROPERTIES). */
  property(name) {
    const p = this.properties();
    if (!(name in p)) throw new Failure(SDK_INVALID_PROPERTIES, `handlerProperties: missing field \`${name}\``);
    return p[name];
  }
  /** The step file named `name`; missing fails naming it (SDK_MISSING_FILE). */
  file(name) {
    const f = this.files.find((x) => x.name === name);
    if (!f) throw new Failure(SDK_MISSING_FILE, `step has no file named \`${name}\``);
    return f;
  }
  payloadPath(...parts) {
    return join('/payload', parts);
  }
  workPath(...parts) {
    return join('/work', parts);
  }
  statePath(...parts) {
    return join('/state', parts);
  }
  /** A path in a directory the gateway's policy grants this handler (`dirs`, e.g. /config);
   * one it does not grant fails with SDK_NOT_GRANTED. */
  granted(guest, ...parts) {
    if (!getDirectories().some(([, g]) => g === guest)) {
      throw new Failure(SDK_NOT_GRANTED, `${guest} is not granted to this handler`);
    }
    return join(guest, parts);
  }
}

const CALLS = {
  isInstalled: IsInstalled, download: Downloaded, backup: BackedUp, install: Installed,
  apply: Applied, cancel: Cancelled, restore: Restored,
};
const DEFAULTS = {
  download: () => Downloaded.SUCCESS,
  backup: () => BackedUp.UNSUPPORTED,
  cancel: () => Cancelled.SUCCESS,
  restore: () => Restored.UNSUPPORTED,
};

const result = (resultCode, erc, details) => ({
  resultCode,
  extendedResultCode: erc | 0, // s32 on the wire
  resultDetails: details,
});

function guard(name, f) {
  const expected = CALLS[name];
  return (raw) => {
    try {
      if (!f) throw new Failure(SDK_WRONG_CODE, `${name} is not implemented`);
      const out = f(raw instanceof Context ? raw : new Context(raw));
      const done = out instanceof Code ? { code: out, text: '' } : out;
      if (!(done?.code instanceof Code) || !Object.values(expected).includes(done.code)) {
        return result(0, SDK_WRONG_CODE, `${name} returned ${done?.code ?? out}, not a code of ${Object.values(expected)[0].call}`);
      }
      return result(done.code.value, 0, done.text);
    } catch (e) {
      if (e instanceof Failure) return result(e.resultCode, e.extendedCode, e.details);
      throw e;
    }
  };
}

/** The `lifecycle` export from a handler's calls (camelCase: isInstalled, install, ...). */
export function handler(calls) {
  return Object.fromEntries(Object.keys(CALLS).map((n) => [n, guard(n, calls[n] ?? DEFAULTS[n])]));
}
