"""`@ID@`: a sandstep update handler in Python (componentize-py).

It installs the step file named by handlerProperties.fileName into /config, a directory the
gateway's policy grants this handler (gateway.toml: `dirs`), atomically (a reader sees the old
file or the new one), and records handlerProperties.installedCriteria in /state, so is-installed
can tell whether there is anything to do. backup keeps the current file in /work, restore puts it
back, cancel removes a half-written file.

sandstep.py beside this file is the kit: typed result codes, Failure, the sandbox's paths, and
the native test harness test_app.py uses. `sandstep handler build` builds the component.
"""
import os
import shutil

import sandstep
from sandstep import Applied, BackedUp, Cancelled, Failure, Installed, IsInstalled, Restored

CONFIG = "/config"  # granted by the gateway's policy (gateway.toml)
RECORD = "installed-version"  # under /state
NOT_A_PLAIN_NAME = 1  # the handler's own failure code: extended code 0x32000001


def props(ctx):
    name, criteria = ctx.property("fileName"), ctx.property("installedCriteria")
    if "/" in name or name.startswith("."):
        raise Failure.vendor(NOT_A_PLAIN_NAME, f"handlerProperties.fileName `{name}` is not a plain file name")
    return name, criteria


class Lifecycle(sandstep.Handler):
    def is_installed(self, ctx):
        _, criteria = props(ctx)
        try:
            with open(ctx.state_path(RECORD)) as f:
                have = f.read()
        except FileNotFoundError:
            have = ""
        if have == criteria:
            return IsInstalled.INSTALLED.details(f"{criteria} is installed")
        return IsInstalled.NOT_INSTALLED.details(f"{criteria} is not installed")

    def backup(self, ctx):
        name, _ = props(ctx)
        current = ctx.granted(CONFIG, name)
        if not os.path.exists(current):
            return BackedUp.UNSUPPORTED.details("nothing installed yet")
        shutil.copyfile(current, ctx.work_path("backup"))
        return BackedUp.SUCCESS

    def install(self, ctx):
        name, _ = props(ctx)
        step_file = ctx.file(name)
        sandstep.progress(10, f"installing {name} ({step_file.size} bytes)")
        with open(step_file.path, "rb") as f:
            sandstep.write_atomically(ctx.granted(CONFIG, name), f.read())
        sandstep.log("info", f"{name} installed into {CONFIG}")
        return Installed.SUCCESS.details(f"{name} installed")

    def apply(self, ctx):
        _, criteria = props(ctx)
        sandstep.write_atomically(ctx.state_path(RECORD), criteria)
        return Applied.SUCCESS.details(f"{criteria} is active")

    def cancel(self, ctx):
        name, _ = props(ctx)
        staged = ctx.granted(CONFIG, name) + ".sandstep-new"
        if os.path.exists(staged):
            os.remove(staged)
            return Cancelled.SUCCESS.details(f"removed the half-written {name}")
        return Cancelled.SUCCESS.details("nothing to clean up")

    def restore(self, ctx):
        name, _ = props(ctx)
        backup = ctx.work_path("backup")
        if not os.path.exists(backup):
            return Restored.UNSUPPORTED.details("no backup was taken")
        with open(backup, "rb") as f:
            sandstep.write_atomically(ctx.granted(CONFIG, name), f.read())
        return Restored.SUCCESS
