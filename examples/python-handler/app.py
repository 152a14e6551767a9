"""`acme/pyconfig:1`: a sandstep update handler in Python, built with componentize-py.

It does what the Rust template does (`sandstep handler new`): installs the step file named by
handlerProperties.fileName into the handler's /state directory and records
handlerProperties.installedCriteria, so is-installed can tell whether there is anything to do.

Build (the world is `sandstep:handler/handler`: logging and progress only; a build against
`all` would import the process and slot capabilities and be refused without their grants):

    componentize-py -d ../../wit -w sandstep:handler/handler componentize app -o pyconfig.wasm
"""
import json
import os
import shutil

from wit_world import exports
from wit_world.imports import host, types

# ADU's result codes this handler returns.
IS_INSTALLED, NOT_INSTALLED = 900, 901
DOWNLOAD_SUCCESS, BACKUP_SUCCESS, BACKUP_UNSUPPORTED = 500, 1000, 1001
INSTALL_SUCCESS, APPLY_SUCCESS = 600, 700
CANCEL_SUCCESS, RESTORE_SUCCESS, RESTORE_UNSUPPORTED = 800, 1100, 1101
# The handler's own failure codes: facility 3 (content handler), component 32 (custom).
ERC_BAD_PROPERTIES = 0x3200_0001
ERC_NO_SUCH_FILE = 0x3200_0002
ERC_IO = 0x3200_0003

RECORD = "/state/installed-version"


class Failure(Exception):
    def __init__(self, erc, details):
        super().__init__(details)
        self.erc, self.details = erc, details


def done(code, details=""):
    return types.StepResult(code, 0, details)


def props(ctx):
    try:
        p = json.loads(ctx.handler_properties or "{}")
        name, criteria = p["fileName"], p["installedCriteria"]
    except (ValueError, KeyError) as e:
        raise Failure(ERC_BAD_PROPERTIES, f"handlerProperties: {e!r}")
    if "/" in name or name.startswith("."):
        raise Failure(ERC_BAD_PROPERTIES, f"handlerProperties.fileName `{name}` is not a plain file name")
    return name, criteria


def guarded(call):
    """A Failure, or an OSError, becomes result 0 with an extended code and details."""

    def run(self, ctx):
        try:
            return call(self, ctx)
        except Failure as f:
            return types.StepResult(0, f.erc, f.details)
        except OSError as e:
            return types.StepResult(0, ERC_IO, f"{e.filename}: {e.strerror}")

    return run


class Lifecycle(exports.Lifecycle):
    @guarded
    def is_installed(self, ctx):
        _, criteria = props(ctx)
        try:
            with open(RECORD) as f:
                have = f.read()
        except FileNotFoundError:
            have = ""
        if have == criteria:
            return done(IS_INSTALLED)
        return done(NOT_INSTALLED, f"{criteria} is not installed")

    def download(self, ctx):
        return done(DOWNLOAD_SUCCESS)

    @guarded
    def backup(self, ctx):
        name, _ = props(ctx)
        if not os.path.exists(f"/state/{name}"):
            return done(BACKUP_UNSUPPORTED, "nothing installed yet")
        shutil.copyfile(f"/state/{name}", "/work/backup")
        return done(BACKUP_SUCCESS)

    @guarded
    def install(self, ctx):
        name, _ = props(ctx)
        step_file = next((f for f in ctx.files if f.name == name), None)
        if step_file is None:
            raise Failure(ERC_NO_SUCH_FILE, f"the step has no file {name}")
        host.progress(10, f"installing {name} ({step_file.size} bytes)")
        shutil.copyfile(step_file.path, f"/state/{name}.new")
        os.replace(f"/state/{name}.new", f"/state/{name}")
        host.log(host.LogLevel.INFO, f"{name} installed")
        return done(INSTALL_SUCCESS, f"{name} installed")

    @guarded
    def apply(self, ctx):
        _, criteria = props(ctx)
        with open(RECORD, "w") as f:
            f.write(criteria)
        return done(APPLY_SUCCESS, f"{criteria} is active")

    def cancel(self, ctx):
        return done(CANCEL_SUCCESS)

    @guarded
    def restore(self, ctx):
        name, _ = props(ctx)
        if not os.path.exists("/work/backup"):
            return done(RESTORE_UNSUPPORTED, "no backup was taken")
        shutil.copyfile("/work/backup", f"/state/{name}")
        return done(RESTORE_SUCCESS)
