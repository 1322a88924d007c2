#!/usr/bin/env python3
"""Provide a Swift 6 toolchain and run a `swift` command in the DTCore package, on Linux too.

    python3 ios_demo/scripts/swift_linux.py                     # provide the toolchain, say which
    python3 ios_demo/scripts/swift_linux.py -- swift build      # ... and run a command in DTCore
    python3 ios_demo/scripts/swift_linux.py --bind /tmp/export --env DT_EXPORT_DIR=/tmp/export -- swift test

Which toolchain: the system's `swift` when it is Swift 6 or newer (macOS with Xcode 16, a Linux
with swift.org's toolchain). Otherwise, on Linux as root, a Debian 13 (trixie) root with Debian's
`swiftlang` package: Debian 12 has no Swift, and trixie's Swift needs a newer C library than
Debian 12's, so it runs in a chroot. The root is made once with debootstrap (installed with
apt-get when missing) from the Debian mirror apt already uses, built in a temporary folder and
renamed into the cache (default: `.swift-linux/` at the repository root, git-ignored) only when
complete; later runs reuse it. About 560 MB is downloaded, 2.5 GB is kept on disk.

Commands run in the chroot with the repository's `ios_demo/` (read-write: SwiftPM writes
`DTCore/.build`) and `tests/golden/` (read-only: the committed vectors) mounted at their own
paths, so `#filePath`, diagnostics and test paths mean the same inside and out; `--bind` adds
more folders (an export directory, a scratch package), read-write. The command also gets
`/proc` (swift finds its runtime libraries through /proc/self/exe) and an empty /tmp. Every
mount is made in a private mount namespace (`unshare --mount`), so none outlives the command,
whatever happens to it.

Environment: the command gets a clean environment (PATH, HOME, LANG) plus each `--env`.

Exit status: the command's own; 0 when only providing. 2: bad arguments (one line). 3: no
toolchain can be had here (one line starting "unavailable:", saying why: not Linux, not root,
no apt-get...). 1: providing it failed (one line starting "error:", the log has the rest).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IOS = REPO / "ios_demo"
PACKAGE = IOS / "DTCore"
GOLDEN = REPO / "tests" / "golden"
DEFAULT_CACHE = REPO / ".swift-linux"
ROOT_NAME = "trixie-swiftlang"
SUITE = "trixie"
# Written into the root as its last step: a root without it is not complete and is never used.
STAMP = "etc/dtconvert-swift-root"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MIN_SWIFT_MAJOR = 6  # Package.swift says swift-tools-version 6.0


class Unavailable(Exception):
    """No Swift toolchain can be had on this machine (exit 3, and the tests skip with this)."""


class Failed(Exception):
    """Providing the toolchain went wrong (exit 1)."""


# ---- which toolchain -----------------------------------------------------------------------------


def swift_major(version_text: str) -> int | None:
    """6 from 'Swift version 6.0.3 (swift-6.0.3-RELEASE)' or 'Apple Swift version 6.1 (...)'."""
    match = re.search(r"Swift version (\d+)\.", version_text)
    return int(match.group(1)) if match else None


def system_swift() -> tuple[str, str] | None:
    """(path, version line) of a system `swift` that is new enough, else None."""
    path = shutil.which("swift")
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout + done.stderr
    major = swift_major(text)
    if done.returncode != 0 or major is None or major < MIN_SWIFT_MAJOR:
        return None
    return path, next(line for line in text.splitlines() if "Swift version" in line).strip()


def debian_mirror(sources: list[Path] | None = None) -> str:
    """The Debian archive apt already uses here (not the security archive, not a third party)."""
    if sources is None:
        folder = Path("/etc/apt/sources.list.d")
        sources = [Path("/etc/apt/sources.list")] + (sorted(folder.iterdir()) if folder.is_dir() else [])
    for path in sources:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue  # *.disabled, *.save: apt does not read them either
        for line in path.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if path.suffix == ".list":
                words = line.split()
                words = [w for w in words if not w.startswith("[")]  # [signed-by=...] options
                uris = [words[1]] if len(words) >= 3 and words[0] == "deb" else []
            else:
                uris = line.split()[1:] if line.startswith("URIs:") else []
            for uri in uris:
                if re.match(r"https?://", uri) and uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def why_no_root_can_be_built() -> str | None:
    """The reason a Debian 13 root cannot be made here, or None when it can."""
    if platform.system() != "Linux":
        return f"there is no Swift {MIN_SWIFT_MAJOR} `swift` on PATH, and a Debian root needs Linux (this is {platform.system()})"
    if os.geteuid() != 0:
        return ("there is no Swift 6 `swift` on PATH, and the Debian 13 root that provides one needs root to make "
                "and to enter (debootstrap, chroot, mount); run as root, or install Swift 6 from swift.org")
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"there is no Swift 6 `swift` on PATH, and `{tool}` (needed to run the Debian 13 root) is not installed"
    if shutil.which("debootstrap") is None and shutil.which("apt-get") is None:
        return "there is no Swift 6 `swift` on PATH, and neither debootstrap nor apt-get (to install it) is here"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:  # root without CAP_SYS_ADMIN, as in an unprivileged container
        return f"there is no Swift 6 `swift` on PATH, and this root cannot make a mount namespace: {probe.stderr.strip()}"
    return None


# ---- the cached Debian 13 root -----------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """Delete a root folder, never while anything is mounted inside it (a bind mount of /dev
    would take the host's devices with it)."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise Failed(f"{path} still has mounts ({', '.join(mounted)}); unmount them, then run again")
    shutil.rmtree(path)


@contextmanager
def locked(cache: Path):
    """One user of the cache at a time: the build, and each command's mounts."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def in_private_mounts(script: str, *args: str, log=None) -> int:
    """Run a shell script in a new, private mount namespace: its mounts vanish when it ends."""
    command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *args]
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT if log else None, stdin=subprocess.DEVNULL).returncode


def say(message: str) -> None:
    print(f"swift_linux: {message}", file=sys.stderr, flush=True)


def ensure_debootstrap(log) -> None:
    if shutil.which("debootstrap"):
        return
    say("installing debootstrap with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]
    if subprocess.run(install, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update"], stdout=log, stderr=subprocess.STDOUT, env=env)
        if subprocess.run(install, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
            raise Failed(f"apt-get install debootstrap failed; see {log.name}")


BUILD_ROOT = r"""
set -eu
partial=$1 mirror=$2 suite=$3
debootstrap --variant=minbase "$suite" "$partial" "$mirror"
cp /etc/resolv.conf "$partial/etc/resolv.conf"
mount -t proc proc "$partial/proc"
chroot "$partial" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update && apt-get install -y swiftlang && apt-get clean && rm -rf /var/lib/apt/lists/*'
umount "$partial/proc"
"""


def build_root(cache: Path) -> Path:
    """Make the Debian 13 root with swiftlang in a temporary folder, then rename it into place."""
    root = cache / ROOT_NAME
    partial = cache / f"{ROOT_NAME}.partial"
    remove_tree(partial)  # what a killed earlier build left
    log_path = cache / "build.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        ensure_debootstrap(log)
        mirror = debian_mirror()
        say(f"making a Debian 13 root with swiftlang from {mirror} in {partial} (about a minute and 560 MB; once)")
        log.flush()
        code = in_private_mounts(BUILD_ROOT, str(partial), mirror, SUITE, log=log)
    if code != 0:
        raise Failed(f"making the Debian 13 root failed (exit {code}); see {log_path}")
    version = chroot_swift_version(partial)
    (partial / STAMP).write_text(f"{version}\nbuilt in {time.monotonic() - started:.0f} s from {mirror}\n")
    partial.rename(root)
    say(f"{version} ready in {root} after {time.monotonic() - started:.0f} s")
    return root


def chroot_swift_version(root: Path) -> str:
    script = 'mount -t proc proc "$1/proc" && exec chroot "$1" env -i PATH=' + CHROOT_PATH + " HOME=/root swift --version"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(root)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    text = done.stdout + done.stderr
    major = swift_major(text)
    if done.returncode != 0 or major is None or major < MIN_SWIFT_MAJOR:
        raise Failed(f"the Debian 13 root's swift does not run or is older than {MIN_SWIFT_MAJOR}: {text.strip()[-300:]}")
    return next(line for line in text.splitlines() if "Swift version" in line).strip()


def cached_root(cache: Path) -> Path:
    root = cache / ROOT_NAME
    if (root / STAMP).is_file():
        return root
    remove_tree(root)  # no stamp: not ours to trust
    return build_root(cache)


# ---- running a command ---------------------------------------------------------------------------

RUN_IN_ROOT = r"""
set -eu
root=$1 cwd=$2 binds=$3 read_only=$4
shift 4
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/tmp"  # what swift leaves in /tmp goes with the run
mount_at_same_path() {  # $1 host path, $2 ro|rw
    mkdir -p "$root$1"
    mount --bind "$1" "$root$1"
    if [ "$2" = ro ]; then mount -o remount,bind,ro "$root$1"; fi
}
for path in $binds; do mount_at_same_path "$path" rw; done
for path in $read_only; do mount_at_same_path "$path" ro; done
exec chroot "$root" sh -c 'cd "$1" && shift && exec "$@"' sh "$cwd" "$@"
"""


def run_in_root(root: Path, command: list[str], cwd: Path, binds: list[Path], env: dict[str, str]) -> int:
    writable = [IOS.resolve(), *(p.resolve() for p in binds)]  # SwiftPM writes DTCore/.build
    readable = [GOLDEN.resolve()]
    for path in writable + readable:
        if " " in str(path) or not path.is_dir():
            raise Failed(f"cannot mount {path} into the root (not a folder, or a space in its name)")
    created = [p for p in writable + readable if not (root / str(p).lstrip("/")).exists()]
    environment = [f"PATH={CHROOT_PATH}", "HOME=/root", "LANG=C.UTF-8", *(f"{k}={v}" for k, v in env.items())]
    try:
        return in_private_mounts(RUN_IN_ROOT, str(root), str(cwd.resolve()), " ".join(map(str, writable)),
                                 " ".join(map(str, readable)), "env", "-i", *environment, *command)
    finally:
        # The empty mount points made for this run, up to the root; rmdir never removes a
        # non-empty folder, so nothing of the host can go.
        for path in created:
            inside = root / str(path).lstrip("/")
            while inside != root and inside.is_dir() and not mounts_under(inside):
                try:
                    inside.rmdir()
                except OSError:
                    break
                inside = inside.parent


def run_with_system_swift(command: list[str], cwd: Path, env: dict[str, str]) -> int:
    return subprocess.run(command, cwd=cwd, env={**os.environ, **env}).returncode


# ---- the command line ------------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="swift_linux.py", description=__doc__.split("\n\n")[0],
        epilog="example: python3 ios_demo/scripts/swift_linux.py -- swift test --parallel")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the Debian 13 root is kept (default: %(default)s)")
    parser.add_argument("--bind", type=Path, action="append", default=[], metavar="PATH",
                        help="also mount this folder in the root, at the same path, read-write (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set for the command (repeatable)")
    parser.add_argument("--cwd", type=Path, default=PACKAGE, help="where the command runs (default: %(default)s)")
    parser.add_argument("command", nargs="*", help="after --: the command, starting with swift")
    parser.error = lambda message: fail_usage(message)  # one line, exit 2
    args = parser.parse_args(argv)
    if args.command and args.command[0] != "swift":
        fail_usage(f"the command must start with swift, got {args.command[0]!r}")
    for item in args.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item, re.DOTALL):
            fail_usage(f"--env takes NAME=VALUE, got {item!r}")
    for path in args.bind:
        if not path.is_absolute() or not path.is_dir():
            fail_usage(f"--bind takes an existing folder's absolute path, got {str(path)!r}")
    cwd = args.cwd.resolve()
    if not cwd.is_dir():
        fail_usage(f"--cwd {str(args.cwd)!r} is not a folder")
    if not (cwd == IOS or IOS in cwd.parents or any(cwd == p.resolve() or p.resolve() in cwd.parents for p in args.bind)):
        fail_usage(f"--cwd must be inside {IOS} or a --bind path (it is what the root can see), got {str(cwd)!r}")
    return args


def fail_usage(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    env = dict(item.split("=", 1) for item in args.env)
    try:
        found = system_swift()
        if found is not None:
            path, version = found
            if not args.command:
                print(f"swift: {version} ({path}, the system's)")
                return 0
            return run_with_system_swift(args.command, args.cwd.resolve(), env)
        reason = why_no_root_can_be_built()
        if reason is not None:
            raise Unavailable(reason)
        with locked(args.cache):
            root = cached_root(args.cache.resolve())
            if not args.command:
                version, built = (root / STAMP).read_text().splitlines()[:2]
                print(f"swift: {version} (Debian 13 root {root}, {built})")
                return 0
            return run_in_root(root, args.command, args.cwd, args.bind, env)
    except Unavailable as reason:
        print(f"unavailable: {reason}", file=sys.stderr)
        return 3
    except Failed as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
