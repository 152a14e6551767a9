"""sandstep's Python handler kit: typed result codes, failures, sandbox paths, a native test harness.

A handler is a class named ``Lifecycle`` in ``app.py`` deriving from ``sandstep.Handler``. Each of
its methods gets a ``sandstep.Context`` and returns a code of its own call::

    class Lifecycle(sandstep.Handler):
        def is_installed(self, ctx):
            return sandstep.IsInstalled.NOT_INSTALLED.details("nothing yet")

``download``, ``backup``, ``cancel`` and ``restore`` have defaults (success, unsupported). A code of
another call (``Installed.SUCCESS`` from ``apply``) is refused, as the Rust SDK's types refuse it.
Raising ``sandstep.Failure`` ends the call with result 0 and its extended code; an ``OSError``
carries its errno as the extended code (facility 0, as ADU reports errno values and as the Rust
SDK does), so a full disk reads 0x00000033 (ENOSPC) and not one catch-all vendor code.

Inside a component (componentize-py) the host's imports serve logging and progress and the
sandbox's directories are the real ones. Run natively (``sandstep handler test``, or
``python3 -m unittest``), ``Context.for_test`` stands in for the host: ``/payload``, ``/work``,
``/state`` and the granted directories become directories of the test's own.
"""

import enum
import errno as _errno
import hashlib
import json
import os
import sys
from types import SimpleNamespace as _NS

try:  # Inside the component: the bindings componentize-py generates.
    from wit_world.imports import host as _host
    from wit_world.imports import types as _types
except ImportError:  # Natively: the test harness below stands in.
    _host = _types = None

NATIVE = _host is None

# Extended result codes the kit itself uses (facility 11, component 0xA0), as the Rust SDK.
SDK_INVALID_PROPERTIES = 0xBA000001
SDK_MISSING_FILE = 0xBA000002
SDK_NOT_GRANTED = 0xBA000004
SDK_WRONG_CODE = 0xBA000005


def vendor_code(code):
    """A handler's own extended code: facility 3 (content handler), component 32, ``code``."""
    return 0x32000000 | (code & 0xFFFFF)


# WASI's errno numbers (wasi-libc), which CPython reports inside the component; natively the
# test maps the host's errno through its name, so a test sees the code the gateway reports.
_WASI_ERRNO = {
    name: n
    for n, name in enumerate(
        "ESUCCESS E2BIG EACCES EADDRINUSE EADDRNOTAVAIL EAFNOSUPPORT EAGAIN EALREADY EBADF "
        "EBADMSG EBUSY ECANCELED ECHILD ECONNABORTED ECONNREFUSED ECONNRESET EDEADLK "
        "EDESTADDRREQ EDOM EDQUOT EEXIST EFAULT EFBIG EHOSTUNREACH EIDRM EILSEQ EINPROGRESS "
        "EINTR EINVAL EIO EISCONN EISDIR ELOOP EMFILE EMLINK EMSGSIZE EMULTIHOP ENAMETOOLONG "
        "ENETDOWN ENETRESET ENETUNREACH ENFILE ENOBUFS ENODEV ENOENT ENOEXEC ENOLCK ENOLINK "
        "ENOMEM ENOMSG ENOPROTOOPT ENOSPC ENOSYS ENOTCONN ENOTDIR ENOTEMPTY ENOTRECOVERABLE "
        "ENOTSOCK ENOTSUP ENOTTY ENXIO EOVERFLOW EOWNERDEAD EPERM EPIPE EPROTO EPROTONOSUPPORT "
        "EPROTOTYPE ERANGE EROFS ESPIPE ESRCH ESTALE ETIMEDOUT ETXTBSY EXDEV ENOTCAPABLE".split()
    )
}


def errno_code(err):
    """The extended code of an OSError: its errno as the gateway reports it."""
    if err.errno is None:
        return 0
    if not NATIVE:
        return err.errno
    name = _errno.errorcode.get(err.errno, "")
    return _WASI_ERRNO.get(name, err.errno)


class Done:
    """A call's code with details: ``Installed.SUCCESS.details("app.conf installed")``."""

    def __init__(self, code, text=""):
        self.code, self.text = code, str(text)

    def __repr__(self):
        return f"{self.code!r}: {self.text}" if self.text else repr(self.code)


class _Code(enum.IntEnum):
    def details(self, text):
        return Done(self, text)


class IsInstalled(_Code):
    INSTALLED = 900  # the step is skipped
    NOT_INSTALLED = 901  # the step runs


class Downloaded(_Code):
    SUCCESS = 500
    SKIPPED_FILE_EXISTS = 502
    SKIPPED_UPDATE_ALREADY_INSTALLED = 503
    SKIPPED_NO_MATCHING_COMPONENTS = 504


class BackedUp(_Code):
    SUCCESS = 1000
    UNSUPPORTED = 1001  # nothing to back up; not a failure


class Installed(_Code):
    SUCCESS = 600
    SKIPPED_UPDATE_ALREADY_INSTALLED = 603
    SKIPPED_NO_MATCHING_COMPONENTS = 604
    REBOOT_NOW = 605
    REBOOT_AFTER_STEPS = 606
    AGENT_RESTART_NOW = 607
    AGENT_RESTART_AFTER_STEPS = 608


class Applied(_Code):
    SUCCESS = 700
    REBOOT_NOW = 705
    REBOOT_AFTER_STEPS = 706
    AGENT_RESTART_NOW = 707
    AGENT_RESTART_AFTER_STEPS = 708


class Cancelled(_Code):
    SUCCESS = 800
    UNABLE_TO_CANCEL = 801


class Restored(_Code):
    SUCCESS = 1100
    UNSUPPORTED = 1101  # nothing to restore; not a failure
    REBOOT_NOW = 1105
    REBOOT_AFTER_STEPS = 1106
    AGENT_RESTART_NOW = 1107
    AGENT_RESTART_AFTER_STEPS = 1108


class Failure(Exception):
    """A failed call: result code 0 (or -1 for ``cancelled``) with an extended code."""

    def __init__(self, extended_code, details, result_code=0):
        super().__init__(details)
        self.extended_code, self.details, self.result_code = extended_code, str(details), result_code

    @classmethod
    def vendor(cls, code, details):
        """The handler's own code: extended code 0x320NNNNN."""
        return cls(vendor_code(code), details)

    @classmethod
    def cancelled(cls, details):
        return cls(0, details, result_code=-1)


class Result:
    """A call's result as the host gets it (what a native test asserts on)."""

    def __init__(self, result_code, extended_result_code, result_details):
        self.result_code = result_code
        self.extended_result_code = extended_result_code & 0xFFFFFFFF
        self.result_details = result_details

    def __repr__(self):
        return f"Result({self.result_code}, {self.extended_result_code:08X}, {self.result_details!r})"


def _result(code, erc, details):
    details = details.encode()[:1024].decode(errors="ignore")
    if NATIVE:
        return Result(int(code), erc, details)
    erc &= 0xFFFFFFFF
    return _types.StepResult(int(code), erc - (1 << 32) if erc >= 1 << 31 else erc, details)


# The code type each call returns.
_CALLS = {
    "is_installed": IsInstalled,
    "download": Downloaded,
    "backup": BackedUp,
    "install": Installed,
    "apply": Applied,
    "cancel": Cancelled,
    "restore": Restored,
}


def _guard(name, method):
    """Runs one call: the host's context as a Context; its code, Failure or OSError as a result."""
    expected = _CALLS[name]

    def call(self, ctx):
        if not isinstance(ctx, Context):
            ctx = Context(ctx)
        try:
            out = method(self, ctx)
        except Failure as f:
            return _result(f.result_code, f.extended_code, f.details)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            return _result(0, errno_code(e), f"{where}{e.strerror or e}")
        done = out if isinstance(out, Done) else Done(out)
        if not isinstance(done.code, expected):
            return _result(
                0, SDK_WRONG_CODE, f"{name} returned {done.code!r}, not a code of {expected.__name__}"
            )
        return _result(done.code, 0, done.text)

    call.__name__ = name
    return call


class Handler:
    """The base of a handler's ``Lifecycle`` class; see the module's doc."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        for name in _CALLS:
            if name in cls.__dict__:
                setattr(cls, name, _guard(name, cls.__dict__[name]))

    def is_installed(self, ctx):
        raise Failure(SDK_WRONG_CODE, "is_installed is not implemented")

    def download(self, ctx):
        return Downloaded.SUCCESS

    def backup(self, ctx):
        return BackedUp.UNSUPPORTED

    def install(self, ctx):
        raise Failure(SDK_WRONG_CODE, "install is not implemented")

    def apply(self, ctx):
        raise Failure(SDK_WRONG_CODE, "apply is not implemented")

    def cancel(self, ctx):
        return Cancelled.SUCCESS

    def restore(self, ctx):
        return Restored.UNSUPPORTED


for _name in _CALLS:
    setattr(Handler, _name, _guard(_name, getattr(Handler, _name)))


class StepFile:
    def __init__(self, id, name, size, sha256, path):
        self.id, self.name, self.size, self.sha256, self.path = id, name, size, sha256, path


class Component:
    def __init__(self, raw):
        for f in ("id", "name", "group", "manufacturer", "model", "version"):
            setattr(self, f, getattr(raw, f))
        self.properties = dict(raw.properties)


class Context:
    """What a call sees: the step, its properties and files, and where its directories are."""

    def __init__(self, raw, root=None, granted=None):
        self.workflow_id = raw.workflow_id
        u = raw.update_id
        self.update_id = (u.provider, u.name, u.version)
        self.handler_id, self.step_index, self.level = raw.handler_id, raw.step_index, raw.level
        self.handler_properties = raw.handler_properties or "{}"
        self.installed_criteria = raw.installed_criteria
        self.files = [StepFile(f.id, f.name, f.size, f.sha256, f.path) for f in raw.files]
        c = raw.selected_component
        self.component = Component(c) if c is not None else None
        self._root, self._granted = root, dict(granted or {})

    def properties(self):
        """handlerProperties as a dict; not a JSON object fails with SDK_INVALID_PROPERTIES."""
        try:
            p = json.loads(self.handler_properties)
        except ValueError as e:
            raise Failure(SDK_INVALID_PROPERTIES, f"handlerProperties: {e}")
        if not isinstance(p, dict):
            raise Failure(SDK_INVALID_PROPERTIES, "handlerProperties is not a JSON object")
        return p

    def property(self, name):
        """One handlerProperties member; missing fails naming it (SDK_INVALID_PROPERTIES)."""
        p = self.properties()
        if name not in p:
            raise Failure(SDK_INVALID_PROPERTIES, f"handlerProperties: missing field `{name}`")
        return p[name]

    def file(self, name):
        """The step file named ``name``; missing fails naming it (SDK_MISSING_FILE)."""
        for f in self.files:
            if f.name == name:
                return f
        raise Failure(SDK_MISSING_FILE, f"step has no file named `{name}`")

    def _under(self, fixed, parts):
        base = os.path.join(self._root, fixed.lstrip("/")) if self._root else fixed
        return os.path.join(base, *parts)

    def payload_path(self, *parts):
        return self._under("/payload", parts)

    def work_path(self, *parts):
        return self._under("/work", parts)

    def state_path(self, *parts):
        return self._under("/state", parts)

    def granted(self, guest, *parts):
        """A path in a directory the gateway's policy maps in (``dirs``, e.g. ``/config``).

        Natively, the directory ``for_test(granted={guest: host_dir})`` named; one it did not
        fails with SDK_NOT_GRANTED, as the component cannot reach a directory never granted.
        """
        if NATIVE and self._root is not None:
            if guest not in self._granted:
                raise Failure(SDK_NOT_GRANTED, f"{guest} is not granted to this handler")
            return os.path.join(self._granted[guest], *parts)
        return os.path.join(guest, *parts)

    @classmethod
    def for_test(cls, handler_id, properties, root, files=None, granted=None, component=None):
        """A context for a native test.

        ``root``: a directory standing in for the sandbox (``root/payload``, ``root/work`` and
        ``root/state`` are created). ``files``: {name: path of the test's file}, the step's
        files. ``granted``: {guest path: host directory}, as the gateway's ``dirs`` grant.
        ``properties``: handlerProperties, a dict or JSON text.
        """
        for sub in ("payload", "work", "state"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        text = properties if isinstance(properties, str) else json.dumps(properties)
        try:
            criteria = json.loads(text).get("installedCriteria")
        except (ValueError, AttributeError):
            criteria = None
        step_files = []
        for name, path in (files or {}).items():
            with open(path, "rb") as f:
                data = f.read()
            step_files.append(_NS(id=name, name=name, size=len(data),
                                 sha256=hashlib.sha256(data).hexdigest(), path=path))
        raw = _NS(workflow_id="test-workflow", update_id=_NS(provider="test", name="update", version="1.0"),
                 handler_id=handler_id, step_index=0, level=0, handler_properties=text,
                 installed_criteria=criteria, files=step_files, selected_component=component)
        return cls(raw, root=root, granted=granted)


test_log = []  # Natively: every (level, message) and (percent, message) logged, for tests.


def log(level, message):
    """Logs at ``level`` (error, warn, info, debug, trace) into the step's log."""
    if NATIVE:
        test_log.append((level, message))
        print(f"[{level}] {message}", file=sys.stderr)
    else:
        _host.log(getattr(_host.LogLevel, level.upper()), message)


def progress(percent, message=""):
    """Reports progress (0-100) of the running call."""
    if NATIVE:
        test_log.append((percent, message))
    else:
        _host.progress(percent, message)


def write_atomically(path, data):
    """Writes ``path`` so a reader sees the old content or the new, never half: a temporary
    file beside it, synced, then renamed over it."""
    tmp = f"{path}.sandstep-new"
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
