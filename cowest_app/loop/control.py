"""Admin controls and the training dashboard's data, behind an admin secret.

Every admin action checks the secret itself, so calling the API directly is
refused exactly like the hidden buttons. Without a configured secret, admin
actions are disabled altogether.
"""

from __future__ import annotations

import hmac
import json
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cowest_app.config import AppConfig
from cowest_app.loop.registry import AdapterRegistry, RegistryError
from cowest_app.loop.training_job import JobError, TrainingJob, start_scheduler, trigger_now

if TYPE_CHECKING:
    from cowest_app.domains.packs import DomainPack

log = logging.getLogger(__name__)


LOG_SYNC_MINUTES = 10
ADAPTER_SYNC_SECONDS = 30  # how soon an adapter registered by command (or rolled back elsewhere) is served


class AdminError(PermissionError):
    pass


@dataclass(frozen=True)
class AdminGate:
    secret: str | None

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def check(self, provided: str | None) -> None:
        if not self.secret:
            raise AdminError("Admin actions are disabled: set COWEST_ADMIN_SECRET to enable them.")
        if not provided or not hmac.compare_digest(provided.encode(), self.secret.encode()):
            raise AdminError("Wrong admin secret.")


class TrainingControl:
    def __init__(self, config: AppConfig, service: Any, registry: AdapterRegistry, publisher: Any | None = None,
                 start: bool = True, restored: str | None = None) -> None:
        self.config = config
        self.restored = restored  # what start-up brought back from the Hub, for the Training tab
        self.registry = registry
        self.publisher = publisher
        self.gate = AdminGate(config.secrets.admin_secret)
        self.service = service
        self.job = TrainingJob(config, service, registry, publisher)
        self.scheduler = start_scheduler(self.job, config.train_every_minutes) if start else None
        if self.scheduler is not None:
            self.scheduler.add_job(self.sync_adapters, "interval", seconds=ADAPTER_SYNC_SECONDS, id="adapter-sync",
                                   max_instances=1, coalesce=True)
        self.log_sync = None
        self.log_sync_error: str | None = None
        if publisher is not None and start:
            publisher.start()
        if config.hub_log_repo and start:
            self._start_log_sync(service)

    def sync_adapters(self) -> list[str]:
        """Serve every pack's registry-active adapter (`service.sync_adapters`); a running
        training cycle owns its pack's swap, so nothing moves under it."""
        if self.job.running:
            return []
        return sync_adapters(self.config, self.service.weak, self.service.packs)

    def _start_log_sync(self, service: Any) -> None:
        """Mirror the feedback log to a dataset repo; a Hub outage only disables it."""
        from cowest_app.hub.log_sync import write_log_shards

        folder = self.config.data_dir / "hub_log"
        self.scheduler.add_job(write_log_shards, "interval", args=[service.store, folder], minutes=LOG_SYNC_MINUTES,
                               id="log-shards", max_instances=1, coalesce=True)
        # Connecting creates the repo on the Hub, synchronously: on its own thread, so a Hub
        # that hangs (up to the request timeout) or fails never delays serving.
        threading.Thread(target=self._connect_log_sync, args=(folder,), name="cowest-log-sync-start", daemon=True).start()

    def _connect_log_sync(self, folder: Path) -> None:
        from cowest_app.hub.publish import start_log_sync

        try:
            self.log_sync = start_log_sync(folder, self.config.hub_log_repo, self.config.secrets.hf_token,
                                           self.config.hub_endpoint, every_minutes=LOG_SYNC_MINUTES)
        except Exception as exc:
            self.log_sync_error = f"feedback log sync disabled: {type(exc).__name__}"
            log.warning(self.log_sync_error)

    # -- admin actions -------------------------------------------------------
    def start_run(self, secret: str | None) -> str:
        self.gate.check(secret)
        if self.scheduler is None:
            raise JobError("the scheduler is not running")
        return trigger_now(self.scheduler, self.job)

    def stop_run(self, secret: str | None) -> str:
        self.gate.check(secret)
        return "stopping the run" if self.job.stop() else "no run in progress"

    def rollback(self, secret: str | None, version: str | None, pack: str | None = None) -> str:
        self.gate.check(secret)
        return self.job.rollback(version or None, pack or None)

    def export_pairs(self, secret: str | None, fmt: str = "jsonl") -> Path:
        """Every preference pair as a file in TRL's conversational format: admins only, since
        the prompts hold every user's questions."""
        from cowest_app.core.export import export_pairs

        self.gate.check(secret)
        out = Path(tempfile.mkdtemp(prefix="cowest-pairs-")) / f"cowest-pairs.{fmt}"
        return export_pairs(self.service.store, out, fmt)[0]

    def retry_pushes(self, secret: str | None) -> str:
        self.gate.check(secret)
        if self.publisher is None:
            return "no Hub repo configured (COWEST_HUB_REPO)"
        self.publisher.retry_failed()
        return "failed pushes queued again"

    # -- dashboard -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return self.job.snapshot()

    def curve(self) -> list[dict[str, Any]]:
        """Loss and reward margin per logged step of the current or last run."""
        path = self.job.progress_file() or self._last_progress_file()
        if path is None:
            return []
        rows = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = entry.get("step")
            for key, name in (("loss", "loss"), ("rewards/margins", "reward margin")):
                if step is not None and isinstance(entry.get(key), (int, float)):
                    rows.append({"step": step, "value": float(entry[key]), "series": name})
        return rows

    def _last_progress_file(self) -> Path | None:
        for meta in reversed(self.registry.versions()):
            path = self.registry.path(meta.version) / "progress.jsonl"
            if path.is_file():
                return path
        return None

    def history(self, pack: str | None = None) -> list[dict[str, Any]]:
        """A pack's adapter versions, newest first (the trained pack's by default)."""
        rows = []
        pushes = self.publisher.status() if self.publisher is not None else {}  # once for the whole table
        for meta in reversed(self.job.registry_for(pack).versions()):
            m = meta.metrics
            rows.append({
                "version": meta.version,
                "status": meta.status,
                "parent": meta.parent or "base",
                "pairs": meta.n_pairs,
                "train loss": _fmt(m.get("train_loss")),
                "reward margin": _fmt(m.get("rewards/margins")),
                "held-out (candidate)": _fmt(m.get("candidate_score")),
                "held-out (previous)": _fmt(m.get("active_score")),
                "created": meta.created_at,
                "hub": hub_state(pushes, pack or self.job.pack.name, meta),
                "error": (meta.error or "")[:120],
            })
        return rows

    def push_status(self) -> dict[str, Any]:
        status = self.publisher.status() if self.publisher is not None else {}
        if self.log_sync_error:
            status = {**status, "log_sync_error": self.log_sync_error}
        if self.restored:
            status = {**status, "restored_at_start": self.restored}
        return status

    def download(self, version: str, pack: str | None = None) -> Path:
        """A pack's adapter version as a zip with its model card (the trained pack's by default)."""
        from cowest_app.loop.training_job import adapter_card

        pack = pack or self.job.pack.name
        registry = self.job.registry_for(pack)
        card = adapter_card(self.config, self.service.packs[pack], registry, version, self.config.hub_repo)
        return registry.zip(version, card, Path(tempfile.mkdtemp(prefix="cowest-adapter-")))

    def shutdown(self) -> None:
        self.job.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.publisher is not None:
            self.publisher.stop()
        if self.log_sync is not None:
            self.log_sync.stop()


def build_control(config: AppConfig, service: Any, restored: str | None = None) -> TrainingControl:
    """Registry, Hub publisher (when a repo is configured) and the scheduled job; `restored`
    says what start-up brought back from the Hub."""
    publisher = build_publisher(config)
    registry = AdapterRegistry(config.pack_adapters_dir(config.train_pack or service.default_pack))
    return TrainingControl(config, service, registry, publisher, restored=restored)


def hub_state(pushes: Mapping[str, Any], pack: str, meta: Any) -> str:
    """pushed (with its tag) / pending / failed, for a version's row in the table; `pushes` is
    the publisher's `status()`."""
    from cowest_app.hub.publish import hub_tag

    label = hub_tag(pack, meta.version)
    for state in ("pending", "failed"):
        job = next((j for j in pushes.get(state, []) if j.get("kind", "push") == "push" and j.get("label") == label), None)
        if job is not None:
            return f"{state}: {job['last_error']}" if state == "failed" else state
    if meta.hub.get("state") == "pushed":
        return f"pushed as {meta.hub['tag']}"
    return ""


def build_publisher(config: AppConfig):  # -> HubPublisher | None
    """The adapter repo's push queue; each finished push is written into its version's metadata."""
    if not config.hub_repo:
        return None
    from cowest_app.hub.publish import HubPublisher

    return HubPublisher(config.hub_repo, config.secrets.hf_token, config.hub_endpoint,
                        queue_path=config.data_dir / "hub_queue.json", private=not config.hub_public,
                        on_done=lambda entry: record_push(config, entry))


def record_push(config: AppConfig, entry: Mapping[str, Any]) -> None:
    """A finished push (a `HubPublisher.status()["done"]` entry) into its version's `hub` field,
    which outlives the queue file and names the tag it really got."""
    pack, label = entry.get("subfolder"), entry.get("label", "")
    if entry.get("kind", "push") != "push" or not pack or not label.startswith(f"{pack}-"):
        return
    registry = AdapterRegistry(config.pack_adapters_dir(pack))
    version = label[len(pack) + 1:]
    try:
        registry.update(version, hub={"tag": entry["version"], "commit": entry["commit_id"], "state": "pushed",
                                      "note": entry.get("note")})
    except RegistryError as exc:
        log.warning("pushed %s but could not record it: %s", label, exc)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def sync_adapters(config: AppConfig, weak: Any, packs: Mapping[str, DomainPack]) -> list[str]:
    """Serve each pack's registry-active adapter: one registered by command
    (`python -m cowest_app.loop.registry --pack P --adapter DIR`) or rolled back
    elsewhere is hot-swapped in without a restart. Returns what changed."""
    from cowest_app.models.local import BASE_VERSION, AdapterError

    changed = []
    served = weak.adapter_versions()
    for index, pack in enumerate(packs.values()):
        if index == 0 and config.weak_adapter is not None:
            continue  # COWEST_WEAK_ADAPTER pins the first pack's adapter
        registry = AdapterRegistry(config.pack_adapters_dir(pack.name))
        active = registry.active()
        wanted = active.version if active is not None else BASE_VERSION
        if served.get(pack.name, BASE_VERSION) == wanted:
            continue
        try:
            source = str(registry.verified_path(active.version)) if active is not None else None
            weak.swap_adapter(source, wanted, pack.name)
        except (AdapterError, RegistryError) as exc:  # a broken registration must not take serving down
            log.error("pack %s: cannot serve %s, keeping %s: %s", pack.name, wanted, served.get(pack.name, BASE_VERSION), exc)
            continue
        changed.append(f"{pack.name}: {served.get(pack.name, BASE_VERSION)} -> {wanted}")
        log.info("pack %s now serves %s", pack.name, wanted)
    return changed
