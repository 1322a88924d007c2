#!/usr/bin/env python3
"""Copy what the iOS demo needs from a `dtconvert export` directory into the app's Export folder.

    python3 ios_demo/scripts/bundle_export.py EXPORT_DIR DEST_DIR

Xcode runs this as the "Bundle the dtconvert export" Run Script phase, with EXPORT_DIR = the
DT_EXPORT_DIR build setting and DEST_DIR = DTDemo/Export (the blue folder reference that the
Resources phase copies into the app unchanged); run it by hand to do the same without building.

Everything is found through manifest.json: the manifest itself, every device artifact for
target `coreml`, and the golden files (their held-out images are the app's sample inputs); other
targets' artifacts and the cloud decoder stay out of the app. Standard library only, Python
3.9+: the python3 that ships with Xcode runs it.

An export is untrusted input (users download and pass exports around), so before anything is
copied: every path the manifest names must stay inside the export (relative, no `..`, no
symlink leading out, none inside the Core ML package either), every copied file must match its
sha256, and what can be checked without a runtime must be readable (golden `.npy` headers, the
package's own Manifest.json). The copy is staged next to DEST_DIR and swapped in whole, so a
failure leaves the previous bundle as it was.

Exit status 0: bundled, or already up to date; 2: the export cannot be bundled (no manifest,
a malformed one, a path leaving the export, a file missing, corrupt or not matching its sha256)
or the arguments are wrong; 1: DEST_DIR could not be written. Every failure is one line starting
with "error:", which Xcode shows as a build error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
KEEP = {".gitignore"}  # the committed placeholder that keeps the folder reference resolvable
NPY_MAGIC = b"\x93NUMPY"
PACKAGE_MANIFEST = "Manifest.json"  # a Core ML package's own table of contents
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class BundleError(Exception):
    """The export cannot be bundled; the message is the one line the user sees."""


def path_problem(path: str) -> str | None:
    """Why a manifest path cannot name a file inside its export, or None (ExportPaths in the apps)."""
    if path == "":
        return "it is empty"
    if "\0" in path:
        return "it contains a NUL character"
    if path.startswith(("/", "\\")) or WINDOWS_DRIVE.match(path):
        return "it is absolute"
    if ".." in re.split(r"[/\\]", path):
        return 'it contains ".."'
    return None


def leaves(key: str, path: str, why: str) -> BundleError:
    return BundleError(f'{key} "{path}" leaves the export directory ({why})')


def confined(key: str, path: object) -> PurePosixPath:
    """The manifest field `key`'s path, refused unless it is a relative path without `..`."""
    if not isinstance(path, str):
        raise BundleError(f"manifest.json: {key} must be a string")
    why = path_problem(path)
    if why:
        raise leaves(key, path, why)
    return PurePosixPath(path)


class Entry:
    """One file to copy: the manifest field naming it, its path in the export, its sha256."""

    def __init__(self, key: str, path: PurePosixPath, sha256: str, owner: tuple[str, str] | None = None):
        self.key, self.path, self.sha256 = key, path, sha256
        self.owner = owner  # (key, path) of the directory artifact it belongs to


def field(node: object, name: str, where: str, kind: type) -> object:
    value = node.get(name) if isinstance(node, dict) else None
    if not isinstance(value, kind):
        raise BundleError(f"manifest.json: {where}.{name} must be {'an object' if kind is dict else 'a ' + kind.__name__}")
    return value


def bundle_files(manifest: object) -> list[Entry]:
    """Every file the app needs, as the manifest lists it, each path confined."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json: the document must be an object")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BundleError(f"manifest.json: schema_version {version!r} is not one this app reads ({SCHEMA_VERSION})")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list):
        raise BundleError("manifest.json: artifacts must be a list")
    files: list[Entry] = []
    for index, artifact in enumerate(artifacts):
        where = f"artifacts[{index}]"
        # Every path, bundled or not: the app's reader refuses the whole manifest otherwise.
        root = confined(f"{where}.path", artifact.get("path") if isinstance(artifact, dict) else None)
        if artifact.get("part") != "device" or artifact.get("target") != "coreml":
            continue
        if artifact.get("kind") == "directory":
            listed = field(artifact, "files", where, dict)
            if not listed:
                raise BundleError(f"manifest.json: {where}.files is empty; a directory artifact lists the sha256 of every file")
            for name, digest in sorted(listed.items()):
                key = f"{where}.files.{name}"
                files.append(Entry(key, root / confined(key, name), str(digest), owner=(f"{where}.path", str(root))))
        else:
            files.append(Entry(f"{where}.path", root, str(field(artifact, "sha256", where, str))))
    if not files:
        raise BundleError("the export has no Core ML device encoder; export with --target coreml (or all)")
    golden = manifest.get("golden")
    if golden:
        if not isinstance(golden, dict):
            raise BundleError("manifest.json: golden must be an object")
        folder = confined("golden.path", golden.get("path"))
        for name, digest in sorted(field(golden, "files", "golden", dict).items()):
            key = f"golden.files.{name}"
            files.append(Entry(key, folder / confined(key, name), str(digest)))
    return files


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_links(export_dir: Path, files: list[Entry]) -> None:
    """No listed file, and nothing inside a bundled directory artifact, is a symlink leading out."""
    root = os.path.realpath(export_dir)
    packages = sorted({entry.owner for entry in files if entry.owner})
    for key, path in packages:
        real_top = os.path.realpath(export_dir / path)
        if not inside(real_top, root):
            raise leaves(key, path, f"it resolves to {real_top}, outside {root}")
    for entry in files:
        real = os.path.realpath(export_dir / entry.path)
        if not inside(real, root):
            raise leaves(entry.key, str(entry.path), f"it resolves to {real}, outside {root}")
    for key, path in packages:
        top = export_dir / path
        for folder, dirs, names in os.walk(top):
            for name in dirs + names:
                candidate = Path(folder) / name
                if candidate.is_symlink() and not inside(os.path.realpath(candidate), root):
                    inner = candidate.relative_to(top).as_posix()
                    raise leaves(key, path, f"it holds a symlink {inner} to {os.path.realpath(candidate)}, outside {root}")


def copy_checked(source: Path, target: Path, entry: Entry) -> int:
    """Copy `source` to `target`, hashing exactly the bytes copied; refuse a sha256 mismatch."""
    if not source.is_file():
        raise BundleError(f'{entry.key} "{entry.path}": listed in the manifest but not a file in the export')
    digest = hashlib.sha256()
    size = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
            size += len(block)
    if digest.hexdigest() != entry.sha256:
        raise BundleError(f'{entry.key} "{entry.path}": sha256 {digest.hexdigest()[:12]}… does not match the manifest\'s '
                          f"{entry.sha256[:12]}… (modified or corrupt); re-export")
    return size


def check_readable(staging: Path, files: list[Entry]) -> None:
    """What can be checked without a runtime: golden arrays are .npy files, and each Core ML
    package's Manifest.json is a table of contents whose items are files the package lists."""
    for entry in files:
        data_path = staging / entry.path
        if entry.path.suffix == ".npy":
            head = data_path.read_bytes()[:12]
            if not head.startswith(NPY_MAGIC) or len(head) < 10:
                raise BundleError(f'{entry.key} "{entry.path}": not a .npy file (bad magic), though its sha256 matches; re-export')
        if entry.owner and entry.path == PurePosixPath(entry.owner[1]) / PACKAGE_MANIFEST:
            check_package_manifest(data_path, entry, files)


def check_package_manifest(path: Path, entry: Entry, files: list[Entry]) -> None:
    where = f'{entry.key} "{entry.path}"'
    try:
        contents = json.loads(path.read_bytes())
    except ValueError as e:
        raise BundleError(f"{where}: not valid JSON ({e}), though its sha256 matches; Core ML cannot open the package") from None
    items = contents.get("itemInfoEntries") if isinstance(contents, dict) else None
    if not isinstance(items, dict) or not items or contents.get("rootModelIdentifier") not in items:
        raise BundleError(f"{where}: no itemInfoEntries with the rootModelIdentifier; Core ML cannot open the package")
    package = PurePosixPath(entry.owner[1])
    listed = {e.path for e in files}
    for item in items.values():
        item_path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(item_path, str) or path_problem(item_path):
            raise leaves(entry.key, str(item_path), "a package item must be a relative path without '..'")
        item = package / "Data" / item_path  # an item is a file or a folder of files
        if not any(listed_path == item or item in listed_path.parents for listed_path in listed):
            raise BundleError(f"{where}: item {item_path} is not among the files the manifest lists for the package")


def up_to_date(manifest_bytes: bytes, files: list[Entry], dest: Path) -> bool:
    if not (dest / MANIFEST).is_file() or (dest / MANIFEST).read_bytes() != manifest_bytes:
        return False
    for entry in files:
        target = dest / entry.path
        if target.is_symlink() or not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != entry.sha256:
            return False
    return True


def read_manifest(export_dir: Path) -> bytes:
    manifest_path = export_dir / MANIFEST
    real = os.path.realpath(manifest_path)
    if manifest_path.exists() and not inside(real, os.path.realpath(export_dir)):
        raise leaves("the manifest", MANIFEST, f"it resolves to {real}, outside {os.path.realpath(export_dir)}")
    return manifest_path.read_bytes()


def bundle(export_dir: Path, dest: Path) -> str:
    """Copy the app's share of ``export_dir`` into ``dest``; return a one-line report."""
    if not (export_dir / MANIFEST).is_file():
        if (dest / MANIFEST).is_file():
            return f"warning: {export_dir} has no {MANIFEST}; keeping the export already in {dest}"
        raise BundleError(f"{export_dir} has no {MANIFEST}: run 'dtconvert export CKPT --target coreml --out {export_dir}' "
                          f"or set the DT_EXPORT_DIR build setting to an export directory")
    manifest_bytes = read_manifest(export_dir)
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise BundleError(f"{export_dir / MANIFEST}: not valid JSON ({e})") from None
    files = bundle_files(manifest)
    check_links(export_dir, files)
    if up_to_date(manifest_bytes, files, dest):
        return f"{dest} is up to date with {export_dir}"

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the bundle folder's mode
    try:
        total = sum(copy_checked(export_dir / entry.path, staging / entry.path, entry) for entry in files)
        check_readable(staging, files)
        (staging / MANIFEST).write_bytes(manifest_bytes)
        for name in KEEP:
            if (dest / name).is_file():
                shutil.copy2(dest / name, staging / name)
        # Swap the whole folder in only now that every file arrived intact.
        if dest.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, retired / dest.name)
            os.replace(staging, dest)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"bundled {len(files) + 1} files ({total + len(manifest_bytes):,} bytes) from {export_dir} into {dest}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"error: usage: {__doc__.strip().splitlines()[2].strip()}", file=sys.stderr)
        return 2
    try:
        print(bundle(Path(argv[1]), Path(argv[2])))
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: bundling into {argv[2]} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
