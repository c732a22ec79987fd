"""Adapter versions on disk: v1, v2, … each a directory with its metadata.

    data/adapters/
      ACTIVE              name of the active version (absent = bare base model)
      v3/                 adapter files + cowest.json (metadata) + resolved_config.yaml
      .staging-v4/        a training run in progress; discarded on restart

Every metadata or pointer change is a write to a temp file then an atomic
rename, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import zipfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from cowest_app.hub.publish import RELEASE_FILES, WEIGHT_FILES
from cowest_app.files import write_atomic

STATUSES = ("candidate", "active", "rejected", "failed", "archived")
META_FILE = "cowest.json"
ACTIVE_FILE = "ACTIVE"
STAGING_PREFIX = ".staging-"
_VERSION = re.compile(r"^v(\d+)$")


class RegistryError(ValueError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AdapterVersion:
    version: str
    status: str
    parent: str | None = None
    base_model: str | None = None
    data_hash: str | None = None
    n_pairs: int = 0
    last_pair_id: int = 0  # newest preference pair this version was trained on
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    hub: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    files_sha256: dict[str, str] = field(default_factory=dict)  # the weights and config as registered
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)

    @property
    def number(self) -> int:
        return version_number(self.version)


def version_number(version: str) -> int:
    match = _VERSION.match(version)
    if not match:
        raise RegistryError(f"not a version name: {version!r} (expected v1, v2, …)")
    return int(match.group(1))


class AdapterRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------
    def path(self, version: str) -> Path:
        version_number(version)
        return self.root / version

    def get(self, version: str) -> AdapterVersion:
        meta = self.path(version) / META_FILE
        if not meta.is_file():
            raise RegistryError(f"no adapter version {version!r}")
        data = json.loads(meta.read_text())
        return AdapterVersion(**{k: v for k, v in data.items() if k in AdapterVersion.__dataclass_fields__})

    def versions(self) -> list[AdapterVersion]:
        found = [p.name for p in self.root.iterdir() if _VERSION.match(p.name) and (p / META_FILE).is_file()]
        return [self.get(v) for v in sorted(found, key=version_number)]

    def verified_path(self, version: str) -> Path:
        """The version's folder, after checking its files against the sha256 recorded at
        registration: a weights file changed on disk (a flipped byte still parses and
        stays finite) is refused before it is loaded."""
        meta, path = self.get(version), self.path(version)
        for name, recorded in meta.files_sha256.items():
            file = path / name
            actual = _sha256(file) if file.is_file() else "missing"
            if actual != recorded:
                raise RegistryError(f"{version}: {name} does not match the sha256 recorded when it was registered "
                                    f"({actual[:12]} != {recorded[:12]}); refusing to load it")
        return path

    def active(self) -> AdapterVersion | None:
        pointer = self.root / ACTIVE_FILE
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        return self.get(name) if name else None

    def next_version(self, taken: Iterable[str] = ()) -> str:
        """One above every version here and in `taken` (the pack's versions on the Hub), so a
        wiped disk never hands out a number that was already published."""
        names = [p.name.removeprefix(STAGING_PREFIX) for p in self.root.iterdir()] + list(taken)
        numbers = [version_number(name) for name in names if _VERSION.match(name)]
        return f"v{max(numbers, default=0) + 1}"

    # -- writing -----------------------------------------------------------
    def staging_dir(self, version: str) -> Path:
        """Where a training run writes; only `register` makes it a version."""
        path = self.root / f"{STAGING_PREFIX}{version}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def discard_staging(self) -> list[str]:
        """Remove half-written candidates left by a crash or a killed run."""
        removed = []
        for path in self.root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def register(self, staged: Path, meta: AdapterVersion) -> AdapterVersion:
        """Turn a finished staging directory into version `meta.version`."""
        if not (staged / "adapter_config.json").is_file():
            raise RegistryError(f"{staged} holds no adapter (adapter_config.json missing)")
        target = self.path(meta.version)
        if target.exists():
            raise RegistryError(f"version {meta.version} already exists")
        # The weights and config as they are now: `verified_path` refuses them changed later.
        meta = replace(meta, files_sha256={name: _sha256(staged / name) for name in WEIGHT_FILES
                                           if (staged / name).is_file()})
        self._write_meta(staged, meta)
        os.replace(staged, target)  # atomic: the version appears complete or not at all
        return meta

    def adopt(self, staged: Path, meta: AdapterVersion) -> AdapterVersion:
        """Make a staging directory version `meta.version` as `meta` describes it, after checking
        its files against the sha256 recorded in `meta` (a version downloaded from the Hub)."""
        if not meta.files_sha256:
            raise RegistryError(f"{meta.version}: no recorded sha256 to check its files against")
        for name, recorded in meta.files_sha256.items():
            actual = _sha256(staged / name) if (staged / name).is_file() else "missing"
            if actual != recorded:
                raise RegistryError(f"{meta.version}: {name} does not match its recorded sha256 "
                                    f"({actual[:12]} != {recorded[:12]})")
        if self.path(meta.version).exists():
            raise RegistryError(f"version {meta.version} already exists")
        self._write_meta(staged, meta)
        os.replace(staged, self.path(meta.version))
        return meta

    def import_adapter(self, source: Path, promote: bool = True, **fields: Any) -> AdapterVersion:
        """Copy a trained adapter directory (e.g. `training.pipeline`'s dpo/adapter) in as the next
        version, active unless `promote` is False; `fields` are its metadata (metrics, data_hash, ...)."""
        source = Path(source)
        if not (source / "adapter_config.json").is_file():
            raise RegistryError(f"{source} holds no adapter (adapter_config.json missing)")
        version = self.next_version()
        staged = self.staging_dir(version)
        for path in source.iterdir():  # the adapter's own files; our metadata is written by register
            if path.is_file() and path.name != META_FILE:
                shutil.copy2(path, staged / path.name)
        meta = self.register(staged, AdapterVersion(version=version, status="candidate", **fields))
        return self.promote(version) or meta if promote else meta

    def record_failure(self, version: str, error: str, **fields: Any) -> AdapterVersion:
        """Keep a trace of a failed run as a version with status 'failed' (no weights)."""
        path = self.path(version)
        path.mkdir(parents=True, exist_ok=True)
        meta = AdapterVersion(version=version, status="failed", error=error, **fields)
        self._write_meta(path, meta)
        return meta

    def update(self, version: str, **changes: Any) -> AdapterVersion:
        with self._lock:
            meta = replace(self.get(version), **changes, updated_at=utc_now())
            if meta.status not in STATUSES:
                raise RegistryError(f"unknown status {meta.status!r}")
            self._write_meta(self.path(version), meta)
            return meta

    def promote(self, version: str | None) -> AdapterVersion | None:
        """Make `version` active (None = bare base model); the previous one is archived."""
        with self._lock:
            previous = self.active()
            target = None
            if version is not None:
                target = self.get(version)
                if target.status == "failed" or not (self.path(version) / "adapter_config.json").is_file():
                    raise RegistryError(f"{version} has no usable adapter (status {target.status})")
                self._write_meta(self.path(version), replace(target, status="active", updated_at=utc_now()))
            write_atomic(self.root / ACTIVE_FILE, version or "")
            if previous is not None and previous.version != version:
                self._write_meta(self.path(previous.version), replace(previous, status="archived", updated_at=utc_now()))
        return self.get(version) if version else None

    def _write_meta(self, directory: Path, meta: AdapterVersion) -> None:
        write_atomic(directory / META_FILE, json.dumps(asdict(meta), indent=2, sort_keys=True))

    # -- download ----------------------------------------------------------
    def zip(self, version: str, card_md: str, out_dir: Path) -> Path:
        """A zip of the adapter with its model card, for download from the UI (`RELEASE_FILES`)."""
        source = self.path(version)
        if not (source / "adapter_config.json").is_file():
            raise RegistryError(f"{version} has no adapter files to download")
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"cowest-adapter-{version}.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            # Weights, config and metrics only: the version folder's train.jsonl holds users' questions.
            for name in RELEASE_FILES:
                if (source / name).is_file():
                    archive.write(source / name, f"{version}/{name}")
            archive.writestr(f"{version}/README.md", card_md)
        return out


# -- command line --------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Register an adapter trained outside the app (e.g. by training.pipeline) as a pack's next version."""
    import argparse

    from cowest_app.domains.packs import PackError, load_pack

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--pack", required=True, help="the domain pack directory the adapter was trained on")
    parser.add_argument("--adapter", required=True, type=Path, help="directory with adapter_config.json and the weights")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the app's COWEST_DATA_DIR")
    parser.add_argument("--no-promote", action="store_true", help="register as a candidate; do not make it active")
    ns = parser.parse_args(argv)
    try:
        pack = load_pack(ns.pack)
        registry = AdapterRegistry(ns.data_dir / "adapters" / pack.name)  # AppConfig.pack_adapters_dir
        record = ns.adapter / "metrics.json"
        metrics = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        meta = registry.import_adapter(ns.adapter, promote=not ns.no_promote, metrics=metrics,
                                       config={"imported_from": str(ns.adapter.resolve())})
    except (PackError, RegistryError, OSError) as exc:
        parser.error(str(exc))
    print(f"{pack.name}: {meta.version} ({meta.status}) from {ns.adapter}; a running app serves it within a minute")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
