#!/usr/bin/env python3
"""Copy what the iOS demo needs from a `dtconvert export` directory into the app's Export folder.

    python3 ios_demo/scripts/bundle_export.py EXPORT_DIR DEST_DIR

Xcode runs this as the "Bundle the dtconvert export" Run Script phase, with EXPORT_DIR = the
DT_EXPORT_DIR build setting and DEST_DIR = DTDemo/Export (the blue folder reference that the
Resources phase copies into the app unchanged); run it by hand to do the same without building.

Everything is found through manifest.json: the manifest itself, every device artifact for
target `coreml`, and the golden folder (its held-out images are the app's sample inputs). Each
file is checked against the manifest's sha256 as it is copied; other targets' artifacts and the
cloud decoder stay out of the app. Standard library only, Python 3.9+: the python3 that ships
with Xcode runs it.

Exit status 0: bundled, or already up to date; 1: no usable export (the message starts with
"error:", which Xcode shows as a build error).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
KEEP = {".gitignore"}  # the committed placeholder that keeps the folder reference resolvable


class BundleError(Exception):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_relative(path: str) -> PurePosixPath:
    """A manifest path that stays inside the export (no absolute paths, no '..')."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise BundleError(f"manifest path {path!r} leaves the export directory")
    return relative


def bundle_files(manifest: dict) -> list[tuple[PurePosixPath, str | None]]:
    """(relative path, sha256) of every file the app needs, as the manifest lists them."""
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise BundleError(f"manifest schema_version {version!r} is not one this app reads ({SCHEMA_VERSION})")
    encoders = [a for a in manifest.get("artifacts", []) if a.get("part") == "device" and a.get("target") == "coreml"]
    if not encoders:
        raise BundleError("the export has no Core ML device encoder; export with --target coreml (or all)")
    files: list[tuple[PurePosixPath, str | None]] = []
    for artifact in encoders:
        root = safe_relative(artifact["path"])
        if artifact.get("kind") == "directory":
            if not artifact.get("files"):
                raise BundleError(f"{artifact['path']}: a directory artifact with no per-file sha256 in the manifest")
            files += [(root / safe_relative(name), digest) for name, digest in sorted(artifact["files"].items())]
        else:
            files.append((root, artifact["sha256"]))
    golden = manifest.get("golden")
    if golden:
        folder = safe_relative(golden["path"])
        files += [(folder / safe_relative(name), digest) for name, digest in sorted(golden["files"].items())]
    return files


def up_to_date(manifest_bytes: bytes, files: list[tuple[PurePosixPath, str | None]], dest: Path) -> bool:
    if not (dest / MANIFEST).is_file() or (dest / MANIFEST).read_bytes() != manifest_bytes:
        return False
    return all((dest / rel).is_file() and (digest is None or sha256_file(dest / rel) == digest) for rel, digest in files)


def bundle(export_dir: Path, dest: Path) -> str:
    """Copy the app's share of ``export_dir`` into ``dest``; return a one-line report."""
    manifest_path = export_dir / MANIFEST
    if not manifest_path.is_file():
        if (dest / MANIFEST).is_file():
            return f"warning: {export_dir} has no {MANIFEST}; keeping the export already in {dest}"
        raise BundleError(f"{export_dir} has no {MANIFEST}: run 'dtconvert export CKPT --target coreml --out {export_dir}' "
                          f"or set the DT_EXPORT_DIR build setting to an export directory")
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    files = bundle_files(manifest)
    if up_to_date(manifest_bytes, files, dest):
        return f"{dest} is up to date with {export_dir}"

    staging = dest.parent / f".{dest.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        total = 0
        for rel, digest in files:
            source = export_dir / rel
            if not source.is_file():
                raise BundleError(f"{source}: listed in the manifest but missing")
            if digest is not None and sha256_file(source) != digest:
                raise BundleError(f"{source}: sha256 does not match the manifest (modified or corrupt); re-export")
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / rel)
            total += source.stat().st_size
        (staging / MANIFEST).write_bytes(manifest_bytes)
        # Replace the folder's contents only now that every file arrived intact.
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():
            if old.name in KEEP:
                continue
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        for new in staging.iterdir():
            shutil.move(str(new), str(dest / new.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"bundled {len(files) + 1} files ({total + len(manifest_bytes):,} bytes) from {export_dir} into {dest}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        print(bundle(Path(argv[1]), Path(argv[2])))
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
