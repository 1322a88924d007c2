"""``manifest.json``: the one description of an export that apps, server, client and verifier read.

The keys are documented in ``docs/manifest.md`` and fixed by ``dtconvert/manifest.schema.json``
(a JSON Schema, draft 2020-12). ``schema_version`` changes whenever a reader written for the
old version could misread the new one; readers refuse a newer version.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.resources import files
from pathlib import Path, PurePosixPath

from dtconvert.checkpoint import sha256_file
from dtconvert.errors import UserError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def schema() -> dict:
    return json.loads(files("dtconvert").joinpath("manifest.schema.json").read_text(encoding="utf-8"))


def tree_files(path: Path) -> dict[str, str]:
    """sha256 of every file under a directory artifact, by path relative to it."""
    return {f.relative_to(path).as_posix(): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def tree_sha256(file_hashes: dict[str, str]) -> str:
    """One digest for a directory: sha256 over its sorted 'path sha256' lines."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(file_hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def describe_file(root: Path, relative: str) -> dict:
    """Path, byte size and sha256 of a file or directory artifact (with per-file hashes)."""
    path = root / relative
    if path.is_dir():
        hashes = tree_files(path)
        return {
            "path": relative,
            "kind": "directory",
            "bytes": sum((path / f).stat().st_size for f in hashes),
            "sha256": tree_sha256(hashes),
            "files": hashes,
        }
    return {"path": relative, "kind": "file", "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def schema_problem(instance: dict, json_schema: dict) -> str | None:
    """The first place where ``instance`` breaks ``json_schema``, as 'at PATH: message'; None if it follows it."""
    import jsonschema

    try:
        jsonschema.validate(instance, json_schema)
    except jsonschema.ValidationError as e:
        return f"at {'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
    return None


def validate(manifest: dict, source: str = MANIFEST_NAME) -> None:
    """Raise UserError (one sentence) if ``manifest`` does not follow the schema."""
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UserError(
            f"{source}: manifest schema_version {version} is newer than this dtconvert reads ({SCHEMA_VERSION}); upgrade dtconvert"
        )
    problem = schema_problem(manifest, schema())
    if problem is not None:
        raise UserError(f"{source}: manifest does not follow schema version {SCHEMA_VERSION} {problem}")


def load_manifest(export_dir: Path) -> dict:
    """Read, schema-check and confine an export's manifest: every path it names must stay inside
    the export directory (an export is untrusted input: users download and pass them around)."""
    path = Path(export_dir) / MANIFEST_NAME
    if not Path(export_dir).is_dir():
        raise UserError(f"{export_dir}: no such export directory")
    if not path.is_file():
        raise UserError(f"{path}: missing (is {export_dir} a 'dtconvert export' directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    _refuse_escaping_paths(Path(export_dir), manifest)  # before the schema, whose message would be less plain
    validate(manifest, str(path))
    confine_manifest(Path(export_dir), manifest)
    return manifest


def _refuse_escaping_paths(export_dir: Path, manifest: object) -> None:
    """The path rule on the strings alone (absolute, '..'), on whatever shape the document has."""
    if not isinstance(manifest, dict):
        return
    artifacts = manifest.get("artifacts")
    for i, entry in enumerate(artifacts if isinstance(artifacts, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"]:
            confined(export_dir, entry["path"], f"artifacts[{i}].path")
    golden = manifest.get("golden")
    if isinstance(golden, dict) and isinstance(golden.get("path"), str) and golden["path"]:
        confined(export_dir, golden["path"], "golden.path")


def confined(export_dir: Path, relative: str, key: str) -> Path:
    """``export_dir / relative``, or UserError naming the manifest ``key`` if that path leaves the
    export: an absolute path, a ``..`` part, or (where it exists) a symlink resolving outside."""
    source = export_dir / MANIFEST_NAME
    pure = PurePosixPath(relative)
    if not relative or "\\" in relative or pure.is_absolute() or ".." in pure.parts:
        raise UserError(f"{source}: {key} {relative!r} leaves the export directory (paths must be relative, without '..')")
    path = export_dir / pure
    _inside(export_dir, path, f"{source}: {key} {relative!r}")
    return path


def _inside(export_dir: Path, path: Path, what: str) -> None:
    root, real = export_dir.resolve(), path.resolve()
    if real != root and root not in real.parents:
        raise UserError(f"{what} resolves to {real}, outside the export directory (a symlink?)")


def confine_manifest(export_dir: Path, manifest: dict) -> None:
    """Every artifact path, every file of a directory artifact and the golden files stay inside the export."""
    for i, entry in enumerate(manifest["artifacts"]):
        path = confined(export_dir, entry["path"], f"artifacts[{i}].path")
        for name in entry.get("files", {}):
            confined(export_dir, f"{entry['path']}/{name}", f"artifacts[{i}].files")
        if path.is_dir():  # files the manifest does not list may be links too: nothing inside may point out
            for folder, dirs, names in os.walk(path):
                for name in [*dirs, *names]:
                    inner = Path(folder) / name
                    if inner.is_symlink():
                        _inside(
                            export_dir,
                            inner,
                            f"{export_dir / MANIFEST_NAME}: artifacts[{i}] ({entry['path']}) holds {inner.relative_to(export_dir)}, which",
                        )
    golden = manifest.get("golden")
    if golden is not None:
        confined(export_dir, golden["path"], "golden.path")
        for name in golden["files"]:
            confined(export_dir, f"{golden['path']}/{name}", "golden.files")


def write_manifest(export_dir: Path, manifest: dict) -> Path:
    validate(manifest)
    path = Path(export_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
