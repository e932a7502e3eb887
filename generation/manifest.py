"""Model folders: are they complete, and are they still the files that were registered?

The field reports model caches that corrupt themselves after hundreds of generations. A
sha256 manifest written at registration catches that: worker start and `clearance models
verify` re-hash every file; before each load a cheap size-and-mtime check re-hashes only
files that look touched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CHUNK = 8 * 1024 * 1024
# Files a diffusers component folder needs besides weights, by what the folder holds.
_CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Weights of FLUX components are sharded as e.g. diffusion_pytorch_model-00001-of-00003.
_INDEX_SUFFIX = ".index.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    # Hidden files (editor swap files, .cache) are not part of a model.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def build_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(path.relative_to(folder)): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in _files(folder)
    }


def fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file: cheap to take before each load."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in _files(folder)
    }


@dataclass(frozen=True)
class ManifestDiff:
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def describe(self) -> str:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("changed", self.changed),
                ("missing", self.missing),
                ("not in the manifest", self.added),
            )
            if names
        ]
        return "; ".join(parts) or "matches its manifest"


def compare(
    folder: Path, manifest: dict[str, dict[str, Any]], only: set[str] | None = None
) -> ManifestDiff:
    """Re-hash the files of `folder` (or just those named in `only`) against `manifest`."""
    present = {str(p.relative_to(folder)): p for p in _files(folder)}
    names = set(manifest) | set(present) if only is None else only
    changed, missing, added = [], [], []
    for name in sorted(names):
        if name not in present:
            missing.append(name)
        elif name not in manifest:
            added.append(name)
        elif (
            present[name].stat().st_size != manifest[name]["size"]
            or sha256_file(present[name]) != manifest[name]["sha256"]
        ):
            changed.append(name)
    return ManifestDiff(changed, missing, added)


def missing_files(folder: Path) -> list[str]:
    """What a diffusers pipeline folder lacks: model_index.json, a component folder it
    names, a component's config, or its weights (every shard of a sharded checkpoint)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    try:
        components = json.loads(index.read_text())
    except ValueError:
        return ["model_index.json (not valid JSON)"]
    lacking = []
    for name, spec in sorted(components.items()):
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            lacking.append(f"{name}/")
            continue
        files = {p.name for p in sub.iterdir() if p.is_file()}
        if not files & set(_CONFIG_FILES) and "tokenizer.json" not in files:
            lacking.append(f"{name}/config.json")
        if name.startswith(("transformer", "text_encoder", "vae")):
            lacking += [f"{name}/{shard}" for shard in _missing_weights(sub, files)]
    return lacking


def _missing_weights(sub: Path, files: set[str]) -> list[str]:
    indexes = [f for f in files if f.endswith(_INDEX_SUFFIX)]
    if indexes:
        shards = set(json.loads((sub / indexes[0]).read_text()).get("weight_map", {}).values())
        return sorted(shards - files)
    if any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
        return []
    return ["*.safetensors (no weights)"]
