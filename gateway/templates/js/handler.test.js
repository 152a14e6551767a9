// The handler's calls in the order the agent makes them, natively (`sandstep handler test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as nfs from 'node:fs';
import * as npath from 'node:path';
import * as os from 'node:os';
import { forTest } from './sandstep-testing.js';
import { Applied, Installed, IsInstalled, vendorCode } from './sandstep.js';
import { lifecycle } from './handler.js';

const PROPS = { fileName: 'app.conf', installedCriteria: '1.0' };

function setUp(props = PROPS) {
  const dir = nfs.mkdtempSync(npath.join(os.tmpdir(), 'handler-test-'));
  const config = npath.join(dir, 'config');
  nfs.mkdirSync(config);
  nfs.writeFileSync(npath.join(dir, 'app.conf'), 'greeting=hello\n');
  const ctx = forTest({
    handlerId: '@ID@', properties: props, root: npath.join(dir, 'sandbox'),
    files: { 'app.conf': npath.join(dir, 'app.conf') }, granted: { '/config': config },
  });
  return { ctx, config };
}

test('installs into the granted directory and then reports it installed', () => {
  const { ctx, config } = setUp();
  assert.equal(lifecycle.isInstalled(ctx).resultCode, IsInstalled.NOT_INSTALLED.value);
  assert.equal(lifecycle.install(ctx).resultCode, Installed.SUCCESS.value);
  assert.equal(lifecycle.apply(ctx).resultCode, Applied.SUCCESS.value);
  assert.equal(lifecycle.isInstalled(ctx).resultCode, IsInstalled.INSTALLED.value);
  assert.equal(nfs.readFileSync(npath.join(config, 'app.conf'), 'utf8'), 'greeting=hello\n');
});

test('a file name with a path is refused with the handler\'s own code', () => {
  const r = lifecycle.install(setUp({ fileName: '../x', installedCriteria: '1' }).ctx);
  assert.equal(r.resultCode, 0);
  assert.equal(r.extendedResultCode >>> 0, vendorCode(1));
});

test('a missing config directory fails with its errno', () => {
  const { ctx, config } = setUp();
  nfs.rmdirSync(config);
  const r = lifecycle.install(ctx);
  assert.equal(r.resultCode, 0);
  assert.equal(r.extendedResultCode, 44); // ENOENT, as the gateway reports it
});
