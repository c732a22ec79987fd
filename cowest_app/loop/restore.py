"""Start-up on an ephemeral disk (a Space restart): bring back from the Hub what the app
had before it serves, when the Hub repos are configured.

* Adapters: every `<pack>-vN` tag of the adapter repo that is missing here is downloaded,
  checked against the sha256 its `cowest.json` recorded, and registered as that version;
  the version the `<pack>-active` tag marks becomes active (when this disk had none).
  Numbers therefore continue where the Hub left off and a tag is never reused.
* Feedback log and preference pairs: when the local log is empty, the dataset mirror's
  shards are downloaded and every row is put back with its id.

A Hub that cannot be reached is logged and reported; the app then starts with what the
disk holds (a later push never overwrites a tag with other files, see hub.publish).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from cowest_app.config import AppConfig
from cowest_app.core.store import LogStore
from cowest_app.hub.log_sync import download_mirror, restore_log
from cowest_app.hub.publish import HubPublisher, active_tag
from cowest_app.loop.registry import META_FILE, AdapterRegistry, AdapterVersion, RegistryError

log = logging.getLogger(__name__)
_VERSION_TAG = re.compile(r"^(?P<pack>[A-Za-z0-9][\w.-]*?)-(?P<version>v\d+)$")


@dataclass
class RestoreReport:
    adapters: list[str] = field(default_factory=list)  # "pack vN" restored
    active: dict[str, str] = field(default_factory=dict)  # pack -> version made active
    log_rows: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.adapters or self.log_rows or self.errors)

    def summary(self) -> str:
        parts = [f"{len(self.adapters)} adapter version(s)", *(f"{p} serves {v}" for p, v in self.active.items())]
        if self.log_rows:
            parts.append(", ".join(f"{n} {table}" for table, n in self.log_rows.items()))
        return "restored from the Hub: " + "; ".join(parts) + (f"; errors: {'; '.join(self.errors)}" if self.errors else "")


def restore_from_hub(config: AppConfig, publisher: HubPublisher | None = None) -> RestoreReport:
    """Everything `config`'s Hub repos can give back that the data directory lacks."""
    report = RestoreReport()
    if config.hub_repo:
        publisher = publisher or HubPublisher(config.hub_repo, config.secrets.hf_token, config.hub_endpoint,
                                              queue_path=config.data_dir / "hub_queue.json")
        _guarded(report, "adapters", lambda: restore_adapters(config, publisher, report))
    if config.hub_log_repo:
        _guarded(report, "feedback log", lambda: _restore_log(config, report))
    if report.changed:
        log.info(report.summary())
    return report


def _guarded(report: RestoreReport, what: str, step) -> None:
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - an unreachable Hub must not keep the app from serving
        message = f"{what}: {type(exc).__name__}: {exc}"
        report.errors.append(message)
        log.warning("restore from the Hub failed for the %s", message)


def restore_adapters(config: AppConfig, publisher: HubPublisher, report: RestoreReport) -> None:
    tags = publisher.remote_tags()
    by_pack: dict[str, list[str]] = {}
    for tag in tags:
        if match := _VERSION_TAG.match(tag):
            by_pack.setdefault(match["pack"], []).append(match["version"])
    for pack, versions in by_pack.items():
        registry = AdapterRegistry(config.pack_adapters_dir(pack))
        had_active = registry.active() is not None
        for version in sorted(versions, key=lambda v: int(v[1:])):
            if not registry.path(version).exists():
                _restore_version(registry, publisher, pack, version, report)
        marked = tags.get(active_tag(pack))
        served = next((v for v in versions if tags[f"{pack}-{v}"] == marked), None) if marked else None
        if served and not had_active and registry.path(served).exists() and registry.get(served).status != "failed":
            registry.promote(served)
            report.active[pack] = served


def _restore_version(registry: AdapterRegistry, publisher: HubPublisher, pack: str, version: str,
                     report: RestoreReport) -> None:
    tag = f"{pack}-{version}"
    staged = registry.staging_dir(version)
    commit = publisher.download_release(tag, pack, staged)
    hub = {"tag": tag, "commit": commit, "state": "pushed"}
    try:
        recorded = json.loads((staged / META_FILE).read_text())
        fields = {k: v for k, v in recorded.items() if k in AdapterVersion.__dataclass_fields__}
        meta = AdapterVersion(**{**fields, "version": version, "status": "archived", "hub": hub})
        registry.adopt(staged, meta)
        report.adapters.append(f"{pack} {version}")
    except (OSError, ValueError, TypeError, RegistryError) as exc:
        # Kept as a failed version: its number stays taken, the history says why.
        registry.discard_staging()
        registry.record_failure(version, f"restore from the Hub refused {tag}: {exc}", hub=hub)
        report.errors.append(f"{tag}: {exc}")


def _restore_log(config: AppConfig, report: RestoreReport) -> None:
    store = LogStore(config.db_path)
    if store.counts()["interactions"] or store.max_pair_id():
        return  # this disk kept its log: nothing was lost
    folder = config.data_dir / "hub_log"
    if download_mirror(config.hub_log_repo, config.secrets.hf_token, config.hub_endpoint, folder):
        report.log_rows = restore_log(store, folder)
