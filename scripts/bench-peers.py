#!/usr/bin/env python3
"""Firmware installs side by side: sandstep against the A/B installers users pick instead.

One run, one machine, the same input for every tool: the same images, served by one loopback
nginx (Range support, and a byte count per request in its access log), written into the same kind
of inactive slot: a loop device over a file (Mender's rootfs installer refuses anything but a block
device, so every tool gets one). Slot A holds the running image v1; each install writes slot B,
which is a fresh, empty file-backed loop device before every run.

Tools (Debian 12's packages): curl (`curl -o slot && sync`, the floor), sandstep (full stream; with
a block index for deltas), SWUpdate (`swupdate -d`, raw handler, CMS-signed .swu), Mender
(`mender install URL`, rootfs-image artifact without compression), casync (`casync extract`, with
`--seed` = slot A for deltas) and zchunk (`zckdl` then `unzck` into the slot; for deltas the
device's .zck of v1 as the source, made before the run and not counted).

Every run ends with `sync`, so each figure is the time until the image is durable in the slot.
Reported per run: wall time, bytes the server sent, peak RSS (of the tool's whole process tree),
the tool's extra disk use (its scratch directory after the run) and the bytes the tool's processes
wrote to storage (/proc/<pid>/io write_bytes, including its own bookkeeping).

Usage: scripts/bench-peers.py [--sizes 100,1024] [--runs 2] [--sandstep target/release/sandstep]
       [--wasm-dir target/wasm] [--block-sizes 16384] [--big 4096] [--json FILE]
"""
import argparse
import base64
import functools
import hashlib
import json
import shlex
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
TOOLS = ["curl", "swupdate", "mender", "casync", "zchunk", "sandstep"]
DELTA_TOOLS = ["casync", "zchunk", "sandstep"]
NEEDED = {
    "nginx": "nginx-light", "swupdate": "swupdate", "mender": "mender-client",
    "mender-artifact": "mender-artifact", "casync": "casync", "zck": "zchunk",
    "zckdl": "zchunk", "unzck": "zchunk", "curl": "curl", "cpio": "cpio",
    "openssl": "openssl", "losetup": "mount", "blkdiscard": "util-linux", "time": "time",
}


def sh(*args, **kw):
    """Runs a set-up command; its failure ends the benchmark with the command's output."""
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"bench-peers: {' '.join(map(str, args))} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def prerequisites():
    missing = sorted({pkg for exe, pkg in NEEDED.items() if shutil.which(exe) is None
                      and not Path("/usr/sbin", exe).exists()})
    if missing and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                          env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            sh("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, env=env)
        missing = []
    if missing:
        sys.exit(f"bench-peers: missing Debian packages {missing} (run as root to install them)")


# ---- images -------------------------------------------------------------------------------

def random_image(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(rng.randbytes(n))
            left -= n


def changed_copy(src, dst, regions, seed):
    """dst = src with the byte ranges in `regions` replaced by fresh random bytes."""
    shutil.copyfile(src, dst)
    rng = random.Random(seed)
    with open(dst, "r+b") as f:
        for off, length in regions:
            f.seek(off)
            f.write(rng.randbytes(length))


def scattered_regions(size, share, seed):
    """`share` of the image's 4 KiB blocks, in runs of 1-16 blocks at random 4 KiB offsets."""
    rng, blocks = random.Random(seed), size // 4096
    taken, want = set(), int(blocks * share)
    while len(taken) < want:
        start, run = rng.randrange(blocks), rng.randint(1, 16)
        taken.update(range(start, min(start + run, blocks)))
    runs, prev = [], None
    for b in sorted(taken):
        if prev is not None and b == prev + 1:
            runs[-1][1] += 4096
        else:
            runs.append([b * 4096, 4096])
        prev = b
    return [tuple(r) for r in runs]


def contiguous_region(size, share, seed):
    length = int(size * share) // 4096 * 4096
    start = random.Random(seed).randrange((size - length) // 4096) * 4096
    return [(start, length)]


# ---- the server -----------------------------------------------------------------------------

class Nginx:
    def __init__(self, work):
        self.root, self.log = work / "www", work / "nginx" / "access.log"
        self.root.mkdir()
        (work / "nginx").mkdir()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        conf = work / "nginx" / "nginx.conf"
        temp = work / "nginx"
        conf.write_text(
            f"user root; worker_processes 2; daemon off; pid {temp}/pid; error_log {temp}/error.log;\n"
            "events {}\nhttp {\n log_format bench '$request_uri $status $bytes_sent';\n"
            f" access_log {self.log} bench; sendfile on; keepalive_requests 100000;\n"
            f" client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};\n"
            f" uwsgi_temp_path {temp}; scgi_temp_path {temp};\n"
            f" server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}\n}}\n")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                time.sleep(0.05)
        self.log.touch()

    def url(self, name=""):
        return f"http://127.0.0.1:{self.port}/{name}"

    def mark(self):
        return self.log.stat().st_size

    def bytes_since(self, mark):
        with open(self.log) as f:
            f.seek(mark)
            return sum(int(line.split()[-1]) for line in f if line.strip())

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait()


# ---- slots ----------------------------------------------------------------------------------

class Loop:
    """A loop device over a file of `size` bytes, attached once; `reset` empties it (a discard
    punches the whole backing file and drops the device's cached pages)."""

    def __init__(self, path, size, content=None):
        if content:
            shutil.copyfile(content, path)
        else:
            with open(path, "wb") as f:
                f.truncate(size)
        self.path = path
        # Direct I/O to the backing file: the slot behaves like a disk, not a second page cache.
        self.dev = sh("losetup", "--direct-io=on", "-f", "--show", path).strip()

    def reset(self):
        sh("blkdiscard", self.dev)

    def detach(self):
        subprocess.run(["losetup", "-d", self.dev])
        self.path.unlink(missing_ok=True)


# ---- measuring ------------------------------------------------------------------------------

def measure(cmd, env=None, cwd=None, ok_codes=(0,)):
    """Runs `cmd` (a shell command) then `sync`; wall time, peak RSS of the largest process of the
    command's tree (KiB), bytes its processes wrote to storage, and whether it succeeded."""
    r, w = os.pipe()
    # GNU time's child starts small; a child of this Python process would start with its RSS.
    rss_file = Path(cwd) / ".peak-rss"
    script = (f"/usr/bin/time -f %M -o {rss_file} sh -c {shlex.quote(cmd)}\nrc=$?\nsync\n"
              f"awk '/^write_bytes/ {{print $2}}' /proc/$$/io >&{w}\nexit $rc")
    # Output goes to a file: a pipe nobody reads while the tool runs would stall a chatty tool.
    log_file = Path(cwd) / ".output"
    t = time.monotonic()
    with open(log_file, "wb") as log:
        p = subprocess.Popen(["sh", "-c", script], env=env, cwd=cwd, pass_fds=(w,),
                             stdout=log, stderr=subprocess.STDOUT)
        os.close(w)
        _, status, _ = os.wait4(p.pid, 0)
    took = time.monotonic() - t
    written = os.read(r, 100).decode().strip()
    os.close(r)
    err = log_file.read_text(errors="replace")
    log_file.unlink()
    code = os.waitstatus_to_exitcode(status)
    rss = int(rss_file.read_text().split()[-1])
    rss_file.unlink()
    return took, rss, int(written or 0), code in ok_codes, err


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


# ---- the tools ------------------------------------------------------------------------------

FAKE_FW_PRINTENV = """#!/bin/sh
f="$MENDER_BENCH_ENV"
[ $# -eq 0 ] && exec cat "$f"
for k in "$@"; do grep "^$k=" "$f" || { echo "## Error: \\"$k\\" not defined" >&2; exit 1; }; done
"""
FAKE_FW_SETENV = """#!/bin/sh
f="$MENDER_BENCH_ENV"
[ "$1" = "-s" ] || exit 2
src="$2"; [ "$src" = "-" ] && src=/dev/stdin
while IFS= read -r line; do
  k=${line%%[ =]*}; v=${line#"$k"}; v=${v#?}
  grep -v "^$k=" "$f" > "$f.t"; echo "$k=$v" >> "$f.t"; mv "$f.t" "$f"
done < "$src"
"""


class Bench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.www_of = {}
        self.server = Nginx(work)
        self.sandstep = Path(args.sandstep).resolve()
        self._sandstep_once()
        self._swupdate_once()
        self._mender_once()

    # -- one-time set-up per tool --
    def _sandstep_once(self):
        d = self.work / "sandstep"
        d.mkdir()
        key = d / "vendor.key"
        sh(self.sandstep, "key", "generate", "--out", key)
        signed = d / "firmware.wasm"
        sh(self.sandstep, "handler", "sign", Path(self.args.wasm_dir) / "firmware.wasm",
           "--key", key, "--out", signed)
        self.sandstep_data = d / "data"
        sh(self.sandstep, "trust", "add", "handler", f"{key}.pub", "--data-dir", self.sandstep_data)
        (d / "boot_id").write_text("b1\n")
        self._sandstep_config("/dev/null", "/dev/null")
        sh(self.sandstep, "handler", "install", signed, "--id", "sandstep/firmware:1",
           "--data-dir", self.sandstep_data, "--config", d / "config.toml")

    def _sandstep_config(self, a, b):
        d = self.work / "sandstep"
        (d / "bootenv").write_text("booted_slot=a\n")
        (d / "config.toml").write_text(
            '[trust]\nrequire-manifest-signature = false\n[handlers."sandstep/firmware:1"]\n'
            'capabilities = ["slot"]\n[handlers."sandstep/firmware:1".slot]\n'
            f'a = "{a}"\nb = "{b}"\nboot-id-file = "{d}/boot_id"\n'
            f'boot = {{ method = "env-file", path = "{d}/bootenv" }}\n')

    def _swupdate_once(self):
        d = self.work / "swupdate"
        d.mkdir()
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "key.pem",
           "-out", d / "cert.pem", "-days", "30", "-subj", "/CN=bench",
           "-addext", "extendedKeyUsage=emailProtection")

    def _mender_once(self):
        d = self.work / "mender"
        (d / "bin").mkdir(parents=True)
        for name, text in [("fw_printenv", FAKE_FW_PRINTENV), ("fw_setenv", FAKE_FW_SETENV)]:
            (d / "bin" / name).write_text(text)
            (d / "bin" / name).chmod(0o755)
        # Mender reads the running artifact's name only from this path.
        info = Path("/etc/mender/artifact_info")
        if not info.exists():
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text("artifact_name=bench-v1\n")

    # -- artifacts per image --
    def publish(self, case, image, slot_b, delta_from=None):
        """Puts everything each tool downloads for `image` under www/<case>/."""
        www = self.server.root / case
        www.mkdir()
        os.link(image, www / "fw.img")
        size = image.stat().st_size
        for bs in self.args.block_sizes:
            (www / f"bs{bs}").mkdir()
            os.link(image, www / f"bs{bs}" / "fw.img")
            sh(self.sandstep, "firmware", "index", image, "--block-size", bs,
               "--out", www / f"bs{bs}" / "fw.img.blockindex")
        tools = self.args.tools
        if "swupdate" in tools:
            self._swu(www, image, slot_b)
        if "mender" in tools:
            sh("mender-artifact", "write", "rootfs-image", "-t", "bench", "-n", f"bench-{case}",
               "-f", image, "--compression", "none", "-o", www / "fw.mender")
        if "casync" in tools:
            sh("casync", "make", f"--store={www}/store.castr", www / "fw.caibx", image)
        if "zchunk" in tools:
            sh("zck", "-o", www / "fw.zck", image)
            if delta_from is not None:
                # The device keeps the .zck of what it runs; made here, not counted.
                sh("zck", "-o", www / "seed.zck", delta_from)
        self.www_of[case] = (www, size)

    def _swu(self, www, image, slot):
        """A CMS-signed .swu whose raw image goes to `slot` (sw-description names the device)."""
        d, cert = www / "swu", self.work / "swupdate"
        d.mkdir()
        sha = digest(image).hex()
        (d / "sw-description").write_text(
            'software = { version = "2.0"; hardware-compatibility = ["1.0"];\n'
            f'  images: ( {{ filename = "fw.img"; device = "{slot}"; type = "raw"; sha256 = "{sha}"; }} ); }};\n')
        sh("openssl", "cms", "-sign", "-in", d / "sw-description", "-out", d / "sw-description.sig",
           "-signer", cert / "cert.pem", "-inkey", cert / "key.pem", "-outform", "DER", "-nosmimecap",
           "-binary")
        os.link(image, d / "fw.img")
        with open(www / "fw.swu", "wb") as out:
            subprocess.run(["cpio", "-o", "-H", "crc", "--quiet"], cwd=d, stdout=out, check=True,
                           input=b"sw-description\nsw-description.sig\nfw.img\n")
        shutil.rmtree(d)

    # -- one install --
    def command(self, tool, case, a, b, scratch, delta, bs):
        """The shell command installing `case`'s image into slot `b` (slot `a` runs v1)."""
        url = self.server.url(case)
        www, _ = self.www_of[case]
        if tool == "curl":
            return f"curl -sf -o {b} {url}/fw.img"
        if tool == "swupdate":
            cert = self.work / "swupdate" / "cert.pem"
            return f"swupdate -H bench:1.0 -k {cert} -d '-u {url}/fw.swu'"
        if tool == "mender":
            return self._mender(url, a, b, scratch)
        if tool == "casync":
            seed = f"--seed={a} " if delta else ""
            return f"casync extract {seed}--store={url}/store.castr {url}/fw.caibx {b}"
        if tool == "zchunk":
            source = f"-s {www}/seed.zck " if delta else ""
            return f"zckdl -q {source}{url}/fw.zck && unzck -c fw.zck > {b}"
        return self._sandstep(case, a, b, delta, bs)

    def _mender(self, url, a, b, scratch):
        d, md = self.work / "mender", scratch / "md"
        (md / "scripts").mkdir(parents=True)
        (md / "device_type").write_text("device_type=bench\n")
        part = a.rstrip("0123456789")
        env = scratch / "bootenv"
        env.write_text(f"mender_boot_part={a[len(part):]}\nupgrade_available=0\nbootcount=0\n")
        (d / "bin" / "mount").write_text(f'#!/bin/sh\necho "{a} on / type ext4 (rw)"\n')
        (d / "bin" / "mount").chmod(0o755)
        conf = scratch / "mender.conf"
        conf.write_text(json.dumps({"RootfsPartA": a, "RootfsPartB": b, "ServerURL": "",
                                    "DeviceTypeFile": str(md / "device_type")}))
        return (f"MENDER_BENCH_ENV={env} PATH={d}/bin:$PATH mender -c {conf} -d {md} --no-syslog "
                f"install {url}/fw.mender")

    def _sandstep(self, case, a, b, delta, bs):
        d, www = self.work / "sandstep", self.www_of[case][0]
        self._sandstep_config(a, b)
        for sub in ["downloads", "journal", "streams", "work"]:
            shutil.rmtree(self.sandstep_data / sub, ignore_errors=True)
        files = {"fw.img": entry(www / "fw.img")}
        base = self.server.url(case)
        if delta:
            files["fw.img.blockindex"] = entry(www / f"bs{bs}" / "fw.img.blockindex")
            base = self.server.url(f"{case}/bs{bs}")
        manifest = d / "manifest.json"
        manifest.write_text(json.dumps({
            "updateId": {"provider": "bench", "name": "fw", "version": "2.0"},
            "compatibility": [{"bench": "1"}], "manifestVersion": "5",
            "instructions": {"steps": [{"handler": "sandstep/firmware:1", "files": list(files),
                                        "handlerProperties": {"installedCriteria": "2.0",
                                                              "imageFileName": "fw.img"}}]},
            "files": files}))
        return (f"{self.sandstep} run {manifest} --allow-unsigned --files {base}/ --data-dir "
                f"{self.sandstep_data} --config {d}/config.toml --workflow-id w{time.monotonic_ns()}")


@functools.lru_cache(maxsize=None)
def digest(path):
    """The sha256 of an image file, computed once per path (images do not change in a run)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.digest()


def entry(path):
    return {"fileName": path.name, "sizeInBytes": path.stat().st_size,
            "hashes": {"sha256": base64.b64encode(digest(path)).decode()}}


def slot_matches(dev, image):
    """Whether the slot's first len(image) bytes are the image (checked outside the timing)."""
    return sh("sh", "-c", f"head -c {image.stat().st_size} {dev} | sha256sum").split()[0] == \
        digest(image).hex()


# ---- the runs -------------------------------------------------------------------------------

def one_install(bench, tool, case, slots, delta, bs):
    """Installs `case` with `tool` args.runs times into a fresh slot B; the figures."""
    a, b = slots
    image = bench.www_of[case][0] / "fw.img"
    runs = []
    for i in range(bench.args.runs):
        b.reset()
        scratch = bench.work / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        cmd = bench.command(tool, case, a.dev, b.dev, scratch, delta, bs)
        data_before = du(bench.sandstep_data)
        os.sync()
        mark = bench.server.mark()
        env = dict(os.environ, TMPDIR=str(scratch))
        # sandstep's run exits 3 when the image is in and slot B boots next (reboot required).
        done = (0, 3) if tool == "sandstep" else (0,)
        took, rss, written, ok, err = measure(cmd, env=env, cwd=scratch, ok_codes=done)
        if not ok or not slot_matches(b.dev, image):
            sys.exit(f"bench-peers: {tool} did not install {case} (ok={ok}):\n{cmd}\n{err[-3000:]}")
        runs.append({"seconds": took, "wire_bytes": bench.server.bytes_since(mark),
                     "peak_rss_kib": rss, "written_bytes": written,
                     "extra_disk_bytes": du(scratch) + max(0, du(bench.sandstep_data) - data_before)})
    return runs


def summary(name, size, changed, runs):
    secs = sorted(r["seconds"] for r in runs)
    median = secs[len(secs) // 2]
    last = runs[-1]
    return {"tool": name, "image_bytes": size, "changed_bytes": changed, "seconds": median,
            "seconds_all": secs, "mb_s": size / 1e6 / median,
            "wire_bytes": last["wire_bytes"],
            "peak_rss_mib": max(r["peak_rss_kib"] for r in runs) / 1024,
            "extra_disk_mib": max(r["extra_disk_bytes"] for r in runs) / MIB,
            "written_mib": last["written_bytes"] / MIB}


def row(case, s):
    wire = s["wire_bytes"] / MIB
    over = f" ({s['wire_bytes'] / s['changed_bytes']:.2f}x changed)" if s["changed_bytes"] else ""
    print(f"| {s['image_bytes'] >> 20} MiB {case} | {s['tool']} | {s['seconds']:.2f} s "
          f"({s['mb_s']:.0f} MB/s) | {wire:.1f} MiB{over} | {s['peak_rss_mib']:.1f} MiB | "
          f"{s['extra_disk_mib']:.1f} MiB | {s['written_mib']:.0f} MiB |", flush=True)


def images(work, mib, delta):
    """v1 (slot A's image), v2 with 5% scattered changes, and (for deltas) v2 with one
    contiguous 10% change; each v2 with the number of bytes changed."""
    size = mib * MIB
    d = work / f"img{mib}"
    d.mkdir()
    v1, v2s, v2c = d / "v1.img", d / "v2-scattered.img", d / "v2-contiguous.img"
    random_image(v1, size, seed=mib)
    scattered = scattered_regions(size, 0.05, seed=mib + 1)
    changed_copy(v1, v2s, scattered, seed=mib + 3)
    if not delta:
        return v1, (v2s, sum(n for _, n in scattered)), None
    contiguous = contiguous_region(size, 0.10, seed=mib + 2)
    changed_copy(v1, v2c, contiguous, seed=mib + 4)
    return v1, (v2s, sum(n for _, n in scattered)), (v2c, sum(n for _, n in contiguous))


def one_size(bench, mib, results):
    args = bench.args
    v1, (v2s, changed_s), contiguous = images(bench.work, mib, not args.no_delta)
    a = Loop(bench.work / "slot-a.img", mib * MIB, content=v1)
    b = Loop(bench.work / "slot-b.img", mib * MIB)
    try:
        bench.publish(f"{mib}-s", v2s, b.dev, delta_from=v1)
        if contiguous:
            bench.publish(f"{mib}-c", contiguous[0], b.dev, delta_from=v1)
        for tool in args.tools:
            s = summary(tool, mib * MIB, 0,
                        one_install(bench, tool, f"{mib}-s", (a, b), False, None))
            results.append(dict(s, case="full"))
            row("full image", s)
        if args.no_delta:
            return
        for case, label, changed in [("s", "5% scattered", changed_s),
                                     ("c", "10% contiguous", contiguous[1])]:
            for tool in [t for t in DELTA_TOOLS if t in args.tools]:
                for bs in (args.block_sizes if tool == "sandstep" else [None]):
                    name = f"sandstep, {bs >> 10} KiB blocks" if bs else tool
                    s = summary(name, mib * MIB, changed,
                                one_install(bench, tool, f"{mib}-{case}", (a, b), True, bs))
                    results.append(dict(s, case=f"delta {label}"))
                    row(f"delta, {label}", s)
    finally:
        a.detach()
        b.detach()
        shutil.rmtree(bench.work / f"img{mib}", ignore_errors=True)
        for case in (f"{mib}-s", f"{mib}-c"):
            shutil.rmtree(bench.server.root / case, ignore_errors=True)
            bench.www_of.pop(case, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1024", help="image sizes in MiB")
    ap.add_argument("--runs", type=int, default=2, help="runs per figure (the median is shown)")
    ap.add_argument("--sandstep", default="target/release/sandstep")
    ap.add_argument("--wasm-dir", default="target/wasm")
    ap.add_argument("--block-sizes", default="16384", help="sandstep block-index sizes to try")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--no-delta", action="store_true", help="full images only")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    args.block_sizes = [int(x) for x in args.block_sizes.split(",")]
    args.tools = args.tools.split(",")
    if os.geteuid() != 0:
        sys.exit("bench-peers: needs root (loop devices; Mender and SWUpdate write block devices)")
    prerequisites()
    with tempfile.TemporaryDirectory(prefix="bench-peers.", dir="/var/tmp") as t:
        bench = Bench(args, Path(t))
        results = []
        print("| image | tool | wall time (until synced) | over the wire | peak RSS | extra disk "
              "| written to storage |\n|---|---|---|---|---|---|---|", flush=True)
        try:
            for mib in [int(x) for x in args.sizes.split(",")]:
                one_size(bench, mib, results)
        finally:
            bench.server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
