"""The handler's calls in the order the agent makes them, natively (`sandstep handler test`)."""
import os
import tempfile
import unittest

import sandstep
from app import Lifecycle

PROPS = {"fileName": "app.conf", "installedCriteria": "1.0"}


class HandlerTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.config = os.path.join(self.dir, "config")
        os.makedirs(self.config)
        self.conf = os.path.join(self.dir, "app.conf")
        with open(self.conf, "w") as f:
            f.write("greeting=hello\n")

    def ctx(self, props=PROPS):
        return sandstep.Context.for_test("@ID@", props, root=os.path.join(self.dir, "sandbox"),
                                         files={"app.conf": self.conf}, granted={"/config": self.config})

    def test_installs_into_the_granted_directory_and_then_reports_it_installed(self):
        h, ctx = Lifecycle(), self.ctx()
        self.assertEqual(h.is_installed(ctx).result_code, sandstep.IsInstalled.NOT_INSTALLED)
        self.assertEqual(h.install(ctx).result_code, sandstep.Installed.SUCCESS)
        self.assertEqual(h.apply(ctx).result_code, sandstep.Applied.SUCCESS)
        self.assertEqual(h.is_installed(ctx).result_code, sandstep.IsInstalled.INSTALLED)
        with open(os.path.join(self.config, "app.conf")) as f:
            self.assertEqual(f.read(), "greeting=hello\n")

    def test_a_file_name_with_a_path_is_refused_with_the_handlers_own_code(self):
        r = Lifecycle().install(self.ctx({"fileName": "../x", "installedCriteria": "1"}))
        self.assertEqual(r.result_code, 0)
        self.assertEqual(r.extended_result_code, sandstep.vendor_code(1))

    def test_an_unwritable_config_directory_fails_with_its_errno(self):
        os.rmdir(self.config)
        r = Lifecycle().install(self.ctx())
        self.assertEqual(r.result_code, 0)
        self.assertEqual(r.extended_result_code, 44)  # ENOENT, as the gateway reports it


if __name__ == "__main__":
    unittest.main()
