"""Phone kernels without a phone: the ExecuTorch and LiteRT artifacts run on arm64 under QEMU.

    dtconvert verify export/digits --arch arm64 --cpu a53,a76

XNNPACK picks its int8 micro-kernels by CPU feature (plain NEON on Armv8.0, ``SDOT`` on v8.2+,
``SMMLA`` with I8MM on v8.6+), so the x86 runs of verify do not run the code phones run. Here an
arm64 Debian 12 root runs under ``qemu-aarch64`` (QEMU 10 from Debian 13: QEMU 7.2 mis-emulates
``-cpu max``) through ``binfmt_misc``, and each profile of :data:`PROFILES` sets the CPU QEMU
reports (``QEMU_CPU``), hence the kernels XNNPACK chooses:

* ExecuTorch: ``et_runner`` (``et_runner.cpp``), a small C++ program linked against the C++
  runtime of the aarch64 executorch wheel (``libexecutorch``, its XNNPACK backend): no Python and
  no torch, the runtime the phone apps link. The same source built for x86-64 against this
  environment's executorch gives the x86 side of the comparison, runner against runner.
* LiteRT: the aarch64 ``ai-edge-litert`` wheel in a virtual environment inside the root.

The root is built once (:func:`arm64_root`, as root on Linux x86-64: about 3 minutes and
160 MB downloaded; cached under ``~/.cache/dtconvert/``, ``DTCONVERT_CACHE`` moves it) and reused.
Each profile also reports the CPU features the emulated process sees (the auxiliary vector's
``AT_HWCAP``/``AT_HWCAP2``, what cpuinfo and XNNPACK read), so a profile is shown to change what
the kernels see, not assumed to.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dtconvert.errors import UserError
from dtconvert.targets import cache_dir

# name → (QEMU_CPU, what it stands for)
PROFILES = {
    "a53": ("cortex-a53", "Armv8.0-A: NEON, no dot product (older and low-end phones)"),
    "a76": ("cortex-a76", "Armv8.2-A: NEON dot product and fp16 (most phones since 2018)"),
    "max": ("max", "every feature QEMU emulates: I8MM, BF16, SVE2, SME (recent flagships and beyond)"),
}
DEFAULT_PROFILES = ("a53", "a76")
QEMU_DEB = "pool/main/q/qemu/qemu-user_10.0.13+ds-0+deb13u1_amd64.deb"
QEMU_DEB_SHA256 = "ca6ede739327a20ae5a3498230c8a3a9a072c586e131bc6bcc1201eb1725e336"
QEMU_VERSION = "10.0.13"
SUITE = "bookworm"  # Python 3.11: the aarch64 wheels below are cp311
DEFAULT_MIRROR = "http://deb.debian.org/debian"
EXECUTORCH = "executorch==1.5.1"
LITERT = "ai-edge-litert==2.3.0"
AARCH64_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "dtconvert-aarch64"
# The ELF header of an aarch64 executable, and which of its bytes binfmt_misc compares.
ELF_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
ELF_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
STAMP = "opt/dtconvert/ready"
RUNNER_SOURCE = Path(__file__).with_name("et_runner.cpp")
# Linux's arm64 HWCAP bits that decide XNNPACK's int8 and fp16 kernels (asm/hwcap.h).
HWCAP = {"asimd": 1 << 1, "fphp": 1 << 9, "asimdhp": 1 << 10, "asimddp": 1 << 20, "sve": 1 << 22}
HWCAP2 = {"sve2": 1 << 1, "i8mm": 1 << 13, "bf16": 1 << 14, "sme": 1 << 23}
LITERT_SCRIPT = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
model, images, out = sys.argv[1:4]
x = np.load(images)
interpreter = Interpreter(model_path=model, num_threads=1)
interpreter.allocate_tensors()
i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
rows = []
for n in range(len(x)):
    interpreter.set_tensor(i["index"], x[n : n + 1])
    interpreter.invoke()
    rows.append(interpreter.get_tensor(o["index"])[0].copy())
np.save(out, np.stack(rows))
"""


class Arm64Unavailable(UserError):
    """This machine cannot run arm64 artifacts under emulation; the text says why."""


def parse_profiles(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROFILES]
    if not names or unknown:
        raise UserError(f"--cpu {text!r}: choose from {', '.join(PROFILES)} (comma-separated)")
    return list(dict.fromkeys(names))


def unsupported() -> str | None:
    """Why this machine cannot build or run the arm64 root, or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"arm64 emulation here needs Linux on x86-64, not {sys.platform} {platform.machine()}"
    if os.geteuid() != 0:
        return "arm64 emulation needs root (it mounts binfmt_misc and chroots into an arm64 root)"
    if sys.version_info[:2] != (3, 11):
        return "the arm64 root's wheels are built for Python 3.11, the Python of this environment is not"
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` (needed to run the arm64 root) is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:  # root without CAP_SYS_ADMIN, as in an unprivileged container
        return f"this root cannot make a mount namespace: {probe.stderr.strip()}"
    return None


class Arm64Root:
    """The built root, its QEMU and the x86 runner; :meth:`run` runs a command in it under a profile."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / "root"
        self.qemu = home / "qemu-aarch64"
        self.x86_runner = home / "et_runner_x86_64"

    def run(self, argv: list[str], profile: str, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
        """``argv`` in the root as ``profile``'s CPU; /proc mounted in a private mount namespace."""
        _register_binfmt(self.qemu)
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": PROFILES[profile][0]}
        root = shlex.quote(str(self.root))
        script = f'mount -t proc proc {root}/proc && exec chroot {root} "$@"'
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
            capture_output=True, text=True, timeout=timeout, env={**environment, **(env or {})},
        )  # fmt: skip

    @contextmanager
    def scratch(self):
        """A folder inside the root for one run's files: (host path, path inside the root)."""
        base = self.root / "tmp"
        folder = Path(tempfile.mkdtemp(prefix="dtconvert-", dir=base))
        try:
            yield folder, "/" + str(folder.relative_to(self.root))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def features(self, profile: str) -> list[str]:
        """The CPU features an emulated process sees under ``profile`` (AT_HWCAP, AT_HWCAP2)."""
        done = self.run(["/usr/bin/env", "LD_SHOW_AUXV=1", "/bin/true"], profile, timeout=60)
        values = {}
        for line in done.stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("AT_HWCAP", "AT_HWCAP2"):
                values[key.strip()] = int(value.strip(), 16)
        if "AT_HWCAP" not in values:
            raise Arm64Unavailable(f"could not read the emulated CPU's features under {profile} ({done.stderr.strip()[:200]})")
        found = [name for name, bit in HWCAP.items() if values["AT_HWCAP"] & bit]
        found += [name for name, bit in HWCAP2.items() if values.get("AT_HWCAP2", 0) & bit]
        return found

    def executorch(self, path: Path, images: np.ndarray, profile: str) -> np.ndarray:
        """Every image through the .pte in the arm64 C++ runtime (``None`` profile: the x86 runner)."""
        with self.scratch() as (host, inside):
            np.ascontiguousarray(images, dtype=np.float32).tofile(host / "images.f32")
            shutil.copyfile(path, host / "model.pte")
            shape = [str(len(images)), *map(str, images.shape[1:])]
            done = self.run(
                ["/opt/dtconvert/et_runner", f"{inside}/model.pte", f"{inside}/images.f32", *shape, f"{inside}/out.f32"], profile
            )
            return _read_runner_output(done, host / "out.f32", len(images), f"ExecuTorch on arm64 {profile}")

    def executorch_x86(self, path: Path, images: np.ndarray) -> np.ndarray:
        """The same runner built for this machine: the x86 side of the comparison."""
        with tempfile.TemporaryDirectory(prefix="dtconvert-et-") as tmp:
            host = Path(tmp)
            np.ascontiguousarray(images, dtype=np.float32).tofile(host / "images.f32")
            shape = [str(len(images)), *map(str, images.shape[1:])]
            done = subprocess.run([str(self.x86_runner), str(path), str(host / "images.f32"), *shape, str(host / "out.f32")],
                                  capture_output=True, text=True, timeout=1800)  # fmt: skip
            return _read_runner_output(done, host / "out.f32", len(images), "ExecuTorch C++ runner on x86-64")

    def litert(self, path: Path, images: np.ndarray, profile: str) -> np.ndarray:
        with self.scratch() as (host, inside):
            np.save(host / "images.npy", np.ascontiguousarray(images, dtype=np.float32))
            shutil.copyfile(path, host / "model.tflite")
            (host / "run.py").write_text(LITERT_SCRIPT)
            done = self.run(["/opt/dtconvert/venv/bin/python", f"{inside}/run.py", f"{inside}/model.tflite", f"{inside}/images.npy",
                             f"{inside}/out.npy"], profile)  # fmt: skip
            if done.returncode != 0 or not (host / "out.npy").is_file():
                raise RuntimeError(f"LiteRT on arm64 {profile} failed: {_last_line(done)}")
            return np.load(host / "out.npy")


def _read_runner_output(done: subprocess.CompletedProcess, out: Path, count: int, what: str) -> np.ndarray:
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{what} failed: {_last_line(done)}")
    shape = [int(d) for d in done.stdout.split("output", 1)[1].split()]
    values = np.fromfile(out, dtype=np.float32)
    return values.reshape(count, *shape[1:])


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


# ---- building the root, once -----------------------------------------------------------------------


def arm64_root(cache: Path | None = None, log=print) -> Arm64Root:
    """The cached root, built the first time (a lock keeps two processes from building it at once)."""
    why = unsupported()
    if why:
        raise Arm64Unavailable(why)
    home = (cache or cache_dir()) / f"arm64-{SUITE}"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "root" / STAMP).is_file():
            _build(home, log)
    return Arm64Root(home)


def _build(home: Path, log) -> None:
    _need_tools()
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
    try:
        built = Arm64Root(staging)
        log(f"building the arm64 root in {home} (once: about 3 minutes, 160 MB downloaded)")
        _fetch_qemu(built.qemu)
        _register_binfmt(built.qemu)
        _debootstrap(built.root, log)
        wheels = staging / "wheels"
        _pip_download(wheels, [LITERT], aarch64=True)
        _pip_download(wheels, [EXECUTORCH], aarch64=True, deps=False)
        opt = built.root / "opt" / "dtconvert"
        (opt / "wheels").mkdir(parents=True)
        for wheel in wheels.glob("*.whl"):
            shutil.copyfile(wheel, opt / "wheels" / wheel.name)
        log("installing ai-edge-litert into the arm64 root (emulated pip)")
        for argv in (
            ["/usr/bin/python3", "-m", "venv", "/opt/dtconvert/venv"],
            ["/opt/dtconvert/venv/bin/pip", "install", "-q", "--no-index", "--find-links", "/opt/dtconvert/wheels", LITERT],
        ):
            done = built.run(argv, "a53")
            if done.returncode != 0:
                raise Arm64Unavailable(f"could not install {LITERT} in the arm64 root: {_last_line(done)}")  # fmt: skip
        et_wheel = next(wheels.glob("executorch-*aarch64.whl"))
        _compile_runner(et_wheel, opt, "aarch64-linux-gnu-g++", libs_into=opt / "lib")
        import executorch

        x86_executorch = Path(next(iter(executorch.__path__)))
        _compile_runner(None, staging, "g++", executorch_dir=x86_executorch, output=built.x86_runner)
        shutil.rmtree(opt / "wheels")
        # cpuinfo, which XNNPACK asks which kernels to use, reads these; the host's /sys crashes it.
        cpu = built.root / "sys" / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present"):
            (cpu / name).write_text("0\n")
        (built.root / STAMP).write_text(
            json.dumps({"qemu": QEMU_VERSION, "suite": SUITE, "executorch": EXECUTORCH, "litert": LITERT}) + "\n"
        )
        shutil.rmtree(wheels)
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _need_tools() -> None:
    """debootstrap and the aarch64 cross compiler, from Debian's packages when missing."""
    missing = [pkg for tool, pkg in (("debootstrap", "debootstrap"), ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("g++", "g++"))
               if shutil.which(tool) is None]  # fmt: skip
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Arm64Unavailable(f"{', '.join(missing)} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise Arm64Unavailable(f"could not install {', '.join(missing)} with apt-get: {_last_line(done)}")


def _fetch_qemu(target: Path) -> None:
    """QEMU 10's static qemu-aarch64 from Debian 13's qemu-user package (sha256 pinned)."""
    with tempfile.TemporaryDirectory() as tmp:
        deb = Path(tmp) / "qemu-user.deb"
        try:
            with urllib.request.urlopen(f"{DEFAULT_MIRROR}/{QEMU_DEB}", timeout=120) as r, open(deb, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise Arm64Unavailable(f"could not download {QEMU_DEB} from {DEFAULT_MIRROR} ({e})") from None
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != QEMU_DEB_SHA256:
            raise Arm64Unavailable(f"{QEMU_DEB}: sha256 {digest} is not the pinned {QEMU_DEB_SHA256}")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True, capture_output=True)
        shutil.copyfile(Path(tmp) / "x" / "usr" / "bin" / "qemu-aarch64", target)
        target.chmod(0o755)


def _register_binfmt(qemu: Path) -> None:
    """Let the kernel run aarch64 executables with ``qemu`` (flag F: opened now, usable in a chroot)."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
    if not (BINFMT / "register").exists():
        raise Arm64Unavailable("binfmt_misc cannot be mounted here (/proc/sys/fs/binfmt_misc)")
    entry = BINFMT / BINFMT_NAME
    if entry.exists():
        if f"interpreter {qemu}\n" in entry.read_text():
            return
        entry.write_text("-1")  # ours, pointing at another QEMU: replace it
    try:
        (BINFMT / "register").write_text(f":{BINFMT_NAME}:M::{ELF_MAGIC}:{ELF_MASK}:{qemu}:F")
    except OSError:  # another process registered it a moment ago
        if not entry.exists() or f"interpreter {qemu}\n" not in entry.read_text():
            raise


def _debootstrap(root: Path, log) -> None:
    log(f"debootstrap {SUITE} arm64 (emulated second stage)")
    done = subprocess.run(
        ["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv", SUITE, str(root), DEFAULT_MIRROR],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise Arm64Unavailable(f"debootstrap of the arm64 root failed: {_last_line(done)}")


def _pip_download(into: Path, requirements: list[str], aarch64: bool, deps: bool = True) -> None:
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:", "--dest", str(into)]
    if aarch64:
        argv += [f"--platform={p}" for p in AARCH64_PLATFORMS] + ["--python-version", "3.11", "--implementation", "cp"]
    if not deps:
        argv.append("--no-deps")
    done = subprocess.run([*argv, *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        raise Arm64Unavailable(f"could not download {' '.join(requirements)} for arm64 from the package index: {_last_line(done)}")


def _compile_runner(wheel: Path | None, work: Path, compiler: str, *, libs_into: Path | None = None, executorch_dir: Path | None = None,
                    output: Path | None = None) -> None:  # fmt: skip
    """et_runner.cpp against an executorch wheel's C++ runtime (unpacked from ``wheel``, or installed at ``executorch_dir``)."""
    if wheel is not None:
        unpacked = work / "executorch-wheel"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(unpacked, [n for n in z.namelist() if n.startswith(("executorch/lib/", "executorch/include/"))])
        executorch_dir = unpacked / "executorch"
    assert executorch_dir is not None
    lib = executorch_dir / "lib"
    if libs_into is not None:  # the runner finds them beside it: rpath $ORIGIN/lib
        libs_into.mkdir(parents=True, exist_ok=True)
        for so in lib.glob("*.so"):
            shutil.copyfile(so, libs_into / so.name)
        rpath = "$ORIGIN/lib"
    else:
        rpath = str(lib)
    output = output or work / "et_runner"
    include = executorch_dir / "include"
    argv = [
        compiler, "-std=c++17", "-O2", "-DC10_USING_CUSTOM_GENERATED_MACROS",
        f"-I{include}", f"-I{include / 'executorch/runtime/core/portable_type/c10'}",
        str(RUNNER_SOURCE), "-o", str(output), f"-L{lib}",
        # The backend and kernel libraries register themselves when loaded: link them although nothing names them.
        "-Wl,--no-as-needed", "-lexecutorch_backend_xnnpack", "-lexecutorch_kernels_optimized", "-lexecutorch_kernels_quantized",
        "-Wl,--as-needed", "-lexecutorch", f"-Wl,-rpath,{rpath}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise Arm64Unavailable(f"could not build the ExecuTorch runner with {compiler}: {_last_line(done)}")
    if wheel is not None:
        shutil.rmtree(work / "executorch-wheel")
