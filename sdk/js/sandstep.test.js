// The JavaScript kit's own behaviour, natively (node --import ./sandstep-hooks.js --test; the
// suite runs it: vendor_kit::the_python_and_javascript_kits_pass_their_own_tests).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as nfs from 'node:fs';
import * as npath from 'node:path';
import * as os from 'node:os';
import { forTest } from './sandstep-testing.js';
import {
  Applied, Failure, Installed, SDK_INVALID_PROPERTIES, SDK_MISSING_FILE, SDK_NOT_GRANTED, SDK_WRONG_CODE, fs,
  handler,
} from './sandstep.js';

const probe = handler({
  isInstalled: () => Installed.SUCCESS, // a code of another call
  install: () => Installed.SUCCESS.details('done'),
  apply: (ctx) => (ctx.property('target'), Applied.SUCCESS),
  cancel: () => { throw Failure.cancelled('stopped'); },
  restore: (ctx) => fs.readFile(ctx.statePath('missing', 'file')),
});

const ctx = (properties = {}) =>
  forTest({ handlerId: 'acme/kit:1', properties, root: nfs.mkdtempSync(npath.join(os.tmpdir(), 'kit-')) });

test('a code of another call is refused', () => {
  const r = probe.isInstalled(ctx());
  assert.equal(r.resultCode, 0);
  assert.equal(r.extendedResultCode >>> 0, SDK_WRONG_CODE);
  assert.match(r.resultDetails, /not a code of IsInstalled/);
});

test('a missing property fails naming it', () => {
  const r = probe.apply(ctx());
  assert.equal(r.extendedResultCode >>> 0, SDK_INVALID_PROPERTIES);
  assert.match(r.resultDetails, /missing field `target`/);
  assert.match(probe.apply(ctx('[1]')).resultDetails, /not a JSON object/);
});

test('cancelled is -1 and a file error carries WASI\'s errno', () => {
  assert.equal(probe.cancel(ctx()).resultCode, -1);
  const r = probe.restore(ctx());
  assert.deepEqual([r.resultCode, r.extendedResultCode], [0, 44]);
  assert.match(r.resultDetails, /\/state\/missing\/file: no-entry/);
});

test('defaults, a missing file or grant', () => {
  const c = ctx();
  assert.equal(probe.download(c).resultCode, 500);
  assert.equal(probe.backup(c).resultCode, 1001);
  assert.throws(() => c.file('image.bin'), (e) => e.extendedCode === SDK_MISSING_FILE);
  assert.throws(() => c.granted('/config'), (e) => e.extendedCode === SDK_NOT_GRANTED);
});

test('writeAtomically leaves no staged file and reads back', () => {
  const c = ctx();
  fs.writeAtomically(c.workPath('a'), 'x');
  assert.equal(fs.readText(c.workPath('a')), 'x');
  assert.ok(fs.exists(c.workPath('a')) && !fs.exists(c.workPath('a.sandstep-new')));
  fs.remove(c.workPath('a'));
  assert.ok(!fs.exists(c.workPath('a')));
});
