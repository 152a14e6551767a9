// The native test harness of sandstep's JavaScript kit: stands in for the host (logging,
// progress) and for WASI's preopened directories, mapping /payload, /work, /state and the
// granted directories to directories of the test's own. sandstep-hooks.js routes the
// component's imports here; a test builds its context with `forTest`.
import * as nfs from 'node:fs';
import * as npath from 'node:path';
import { createHash } from 'node:crypto';
import { Context } from './sandstep.js';

/** Every [level, message] logged and [percent, message] reported, for tests to look at. */
export const logged = [];
let preopens = [];

export function log(level, message) {
  logged.push([level, message]);
  console.error(`[${level}] ${message}`);
}

export function progress(percent, message) {
  logged.push([percent, message]);
}

// Node's error codes as wasi:filesystem's, thrown as a component's import throws them.
const CODES = {
  ENOENT: 'no-entry', EACCES: 'access', EEXIST: 'exist', EISDIR: 'is-directory', ENOTDIR: 'not-directory',
  ENOTEMPTY: 'not-empty', ENOSPC: 'insufficient-space', EROFS: 'read-only', EPERM: 'not-permitted',
  EXDEV: 'cross-device', EBUSY: 'busy', EINVAL: 'invalid', ELOOP: 'loop', ENAMETOOLONG: 'name-too-long',
  EDQUOT: 'quota', EFBIG: 'file-too-large',
};

function wasi(f) {
  try {
    return f();
  } catch (e) {
    const code = CODES[e.code] ?? 'io';
    const err = new Error(code);
    err.payload = code;
    throw err;
  }
}

class File {
  constructor(fd) {
    this.fd = fd;
  }
  read(length, offset) {
    return wasi(() => {
      const buf = Buffer.alloc(Number(length));
      const n = nfs.readSync(this.fd, buf, 0, buf.length, Number(offset));
      return [new Uint8Array(buf.subarray(0, n)), n < buf.length];
    });
  }
  write(bytes, offset) {
    return wasi(() => BigInt(nfs.writeSync(this.fd, bytes, 0, bytes.length, Number(offset))));
  }
  sync() {
    wasi(() => nfs.fsyncSync(this.fd));
  }
}

class Directory {
  constructor(host) {
    this.host = host;
  }
  at(rel) {
    return npath.join(this.host, rel);
  }
  openAt(_pathFlags, rel, openFlags, flags) {
    const mode = openFlags.create ? (openFlags.truncate ? 'w' : 'a') : flags.write ? 'r+' : 'r';
    return wasi(() => new File(nfs.openSync(this.at(rel), mode)));
  }
  statAt(_pathFlags, rel) {
    return wasi(() => ({ size: BigInt(nfs.statSync(this.at(rel)).size) }));
  }
  renameAt(from, dir, to) {
    wasi(() => nfs.renameSync(this.at(from), dir.at(to)));
  }
  unlinkFileAt(rel) {
    wasi(() => nfs.unlinkSync(this.at(rel)));
  }
}

export function getDirectories() {
  return preopens.map(([host, guest]) => [new Directory(host), guest]);
}

/**
 * A context for a native test; the sandbox's directories become directories of the test's.
 * root: stands in for the sandbox (root/payload, root/work, root/state are created);
 * files: {name: path of the test's file}, the step's files (copied into root/payload);
 * granted: {guest path: host directory}, as the gateway's `dirs` grant;
 * properties: handlerProperties, an object or JSON text.
 */
export function forTest({ handlerId, properties = {}, root, files = {}, granted = {}, component = null }) {
  const dirs = ['payload', 'work', 'state'].map((d) => {
    nfs.mkdirSync(npath.join(root, d), { recursive: true });
    return [npath.join(root, d), `/${d}`];
  });
  preopens = [...dirs, ...Object.entries(granted).map(([guest, host]) => [host, guest])];
  const text = typeof properties === 'string' ? properties : JSON.stringify(properties);
  let criteria;
  try {
    criteria = JSON.parse(text).installedCriteria;
  } catch {
    criteria = undefined;
  }
  const stepFiles = Object.entries(files).map(([name, path]) => {
    const data = nfs.readFileSync(path);
    nfs.writeFileSync(npath.join(root, 'payload', name), data);
    const sha256 = createHash('sha256').update(data).digest('hex');
    return { id: name, name, size: BigInt(data.length), sha256, path: `/payload/${name}` };
  });
  return new Context({
    workflowId: 'test-workflow',
    updateId: { provider: 'test', name: 'update', version: '1.0' },
    handlerId,
    stepIndex: 0,
    level: 0,
    handlerProperties: text,
    installedCriteria: criteria,
    files: stepFiles,
    selectedComponent: component ?? undefined,
  });
}
