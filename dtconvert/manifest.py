"""``manifest.json``: the one description of an export that apps, server, client and verifier read.

The keys are documented in ``docs/manifest.md`` and fixed by ``dtconvert/manifest.schema.json``
(a JSON Schema, draft 2020-12). ``schema_version`` changes whenever a reader written for the
old version could misread the new one; readers refuse a newer version.
"""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path

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
        return {"path": relative, "kind": "directory", "bytes": sum((path / f).stat().st_size for f in hashes),
                "sha256": tree_sha256(hashes), "files": hashes}
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
        raise UserError(f"{source}: manifest schema_version {version} is newer than this dtconvert reads ({SCHEMA_VERSION}); upgrade dtconvert")
    problem = schema_problem(manifest, schema())
    if problem is not None:
        raise UserError(f"{source}: manifest does not follow schema version {SCHEMA_VERSION} {problem}")


def load_manifest(export_dir: Path) -> dict:
    path = Path(export_dir) / MANIFEST_NAME
    if not Path(export_dir).is_dir():
        raise UserError(f"{export_dir}: no such export directory")
    if not path.is_file():
        raise UserError(f"{path}: missing (is {export_dir} a 'dtconvert export' directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    validate(manifest, str(path))
    return manifest


def write_manifest(export_dir: Path, manifest: dict) -> Path:
    validate(manifest)
    path = Path(export_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
