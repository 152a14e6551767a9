"""The Python kit's own behaviour, natively (the suite runs it: vendor_kit::the_python_and_javascript_kits_pass_their_own_tests)."""
import os
import tempfile
import unittest

import sandstep
from sandstep import Applied, Failure, Installed, IsInstalled


class Probe(sandstep.Handler):
    def is_installed(self, ctx):
        return Installed.SUCCESS  # a code of another call

    def install(self, ctx):
        return Installed.SUCCESS.details("x" * 2000)

    def apply(self, ctx):
        ctx.property("target")
        return Applied.SUCCESS

    def cancel(self, ctx):
        raise Failure.cancelled("stopped")

    def restore(self, ctx):
        open(ctx.state_path("missing", "file"))


class KitTest(unittest.TestCase):
    def ctx(self, props="{}"):
        return sandstep.Context.for_test("acme/kit:1", props, root=tempfile.mkdtemp())

    def test_a_code_of_another_call_is_refused(self):
        r = Probe().is_installed(self.ctx())
        self.assertEqual((r.result_code, r.extended_result_code), (0, sandstep.SDK_WRONG_CODE))
        self.assertIn("not a code of IsInstalled", r.result_details)

    def test_details_are_clamped_to_what_the_host_keeps(self):
        self.assertEqual(len(Probe().install(self.ctx()).result_details), 1024)

    def test_a_missing_property_fails_naming_it(self):
        r = Probe().apply(self.ctx())
        self.assertEqual(r.extended_result_code, sandstep.SDK_INVALID_PROPERTIES)
        self.assertIn("missing field `target`", r.result_details)
        r = Probe().apply(self.ctx("[1]"))
        self.assertIn("not a JSON object", r.result_details)

    def test_cancelled_is_minus_one_and_an_oserror_carries_wasis_errno(self):
        self.assertEqual(Probe().cancel(self.ctx()).result_code, -1)
        r = Probe().restore(self.ctx())
        self.assertEqual((r.result_code, r.extended_result_code), (0, 44))
        self.assertIn("missing", r.result_details)

    def test_defaults_and_a_missing_file_or_grant(self):
        ctx = self.ctx()
        self.assertEqual(Probe().download(ctx).result_code, 500)
        self.assertEqual(Probe().backup(ctx).result_code, 1001)
        with self.assertRaises(Failure) as f:
            ctx.file("image.bin")
        self.assertEqual(f.exception.extended_code, sandstep.SDK_MISSING_FILE)
        with self.assertRaises(Failure) as f:
            ctx.granted("/config")
        self.assertEqual(f.exception.extended_code, sandstep.SDK_NOT_GRANTED)

    def test_write_atomically_leaves_no_staged_file(self):
        d = tempfile.mkdtemp()
        sandstep.write_atomically(os.path.join(d, "a"), "x")
        self.assertEqual(os.listdir(d), ["a"])
        self.assertEqual(IsInstalled.INSTALLED, 900)


if __name__ == "__main__":
    unittest.main()
