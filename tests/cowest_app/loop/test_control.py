"""The app's control: adapters registered by command are served without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

from cowest_app.config import AppConfig
from cowest_app.loop.control import TrainingControl
from cowest_app.models.local import TransformersBackend
from cowest_app.loop.registry import AdapterRegistry, main as register
from cowest_app.serving.service import CollabService
from cowest_app.core.store import LogStore
from tests.fakes.scripted_backend import ScriptedBackend


def nan_adapter(adapter: Path, out: Path) -> Path:
    """A copy whose weights are NaN: it cannot be served."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, out)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, out / "adapter_model.safetensors")
    return out


def test_an_adapter_registered_by_command_is_served_without_a_restart(tmp_path, tiny_model_dir, tiny_adapters):
    config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                       weak_max_new_tokens=4, strong_max_new_tokens=4, packs=("packs/general",))
    service = CollabService(config, TransformersBackend(str(tiny_model_dir)), ScriptedBackend(["Paris."]),
                            LogStore(config.db_path))
    control = TrainingControl(config, service, AdapterRegistry(config.pack_adapters_dir("general")), start=False)
    assert control.sync_adapters() == [] and service.weak.adapter_versions() == {}

    assert register(["--pack", "packs/general", "--adapter", str(tiny_adapters["v1"]), "--data-dir", str(config.data_dir)]) == 0
    assert control.sync_adapters() == ["general: base -> v1"]
    last = list(service.ask("What is the capital of France?", "general"))[-1]
    assert service.store.get_interaction(last.interaction_id).adapter_version == "v1"
    assert control.sync_adapters() == []  # nothing new: nothing rebuilt

    # A registration that cannot be loaded leaves the pack serving what it served.
    broken = nan_adapter(tiny_adapters["v2"], tmp_path / "broken")
    assert register(["--pack", "packs/general", "--adapter", str(broken), "--data-dir", str(config.data_dir)]) == 0
    assert control.sync_adapters() == [] and service.weak.adapter_versions() == {"general": "v1"}

    # Rolled back to the base model elsewhere (no active version): the slot returns to the base.
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    registry.promote(None)
    assert registry.active() is None
    assert control.sync_adapters() == ["general: v1 -> base"] and service.weak.adapter_versions() == {}
    control.shutdown()


def test_every_served_pack_has_its_own_history_download_and_rollback(tmp_path, tiny_model_dir, tiny_adapters):
    import zipfile

    from cowest_app.config import Secrets

    config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                       packs=("packs/general", "packs/medicine"), secrets=Secrets(admin_secret="s3cret"))
    service = CollabService(config, TransformersBackend(str(tiny_model_dir)), ScriptedBackend(["ok"]),
                            LogStore(config.db_path))
    control = TrainingControl(config, service, AdapterRegistry(config.pack_adapters_dir("general")), start=False)
    register(["--pack", "packs/medicine", "--adapter", str(tiny_adapters["v1"]), "--data-dir", str(config.data_dir)])
    control.sync_adapters()

    assert control.history() == [] and [r["version"] for r in control.history("medicine")] == ["v1"]
    with zipfile.ZipFile(control.download("v1", "medicine")) as archive:
        card = archive.read("v1/README.md").decode()
    assert "medicine-v1" in card and 'subfolder="medicine"' in card
    assert control.rollback("s3cret", None, "medicine") == "medicine: active adapter is now base"
    assert service.weak.adapter_versions() == {}
    assert AdapterRegistry(config.pack_adapters_dir("medicine")).active() is None
    control.shutdown()


def flip_one_weight_bit(adapter_dir: Path) -> None:
    """Flip the lowest bit of the first weight: still a finite float, so only a hash can tell."""
    import json
    import struct

    import torch
    from safetensors.torch import load_file

    path = adapter_dir / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    first = min((v["data_offsets"][0], k) for k, v in json.loads(data[8:8 + header]).items() if k != "__metadata__")
    data[8 + header + first[0]] ^= 1
    path.write_bytes(bytes(data))
    assert all(bool(torch.isfinite(t).all()) for t in load_file(path).values())


def test_an_adapter_changed_on_disk_is_refused_at_start_sync_and_rollback(tmp_path, tiny_model_dir, tiny_adapters):
    from cowest_app.config import Secrets
    from cowest_app.loop.training_job import JobError
    from cowest_app.serving.service import adapter_slots, load_served_packs

    config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                       packs=("packs/general",), secrets=Secrets(admin_secret="s3cret"))
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    v1 = registry.import_adapter(tiny_adapters["v1"])
    assert set(v1.files_sha256) == {"adapter_config.json", "adapter_model.safetensors"}
    assert adapter_slots(config, load_served_packs(config))["general"].version == "v1"

    flip_one_weight_bit(registry.path("v1"))
    assert "general" not in adapter_slots(config, load_served_packs(config))  # a restart serves the base

    service = CollabService(config, TransformersBackend(str(tiny_model_dir)), ScriptedBackend(["ok"]),
                            LogStore(config.db_path))
    control = TrainingControl(config, service, registry, start=False)
    assert control.sync_adapters() == [] and service.weak.adapter_versions() == {}
    import pytest

    with pytest.raises(JobError, match="sha256"):
        control.rollback("s3cret", "v1")
    assert service.weak.adapter_versions() == {}
    control.shutdown()


def test_the_adapter_repo_is_private_unless_made_public(tmp_path, tiny_model_dir, monkeypatch):
    from cowest_app.loop.control import build_control
    from tests.conftest import make_lora_adapter
    from tests.fakes.hub_server import serve_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    service = CollabService(AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                                      packs=("packs/general",)),
                            TransformersBackend(str(tiny_model_dir)), ScriptedBackend(["ok"]),
                            LogStore(tmp_path / "log.sqlite3"))
    with serve_hub() as hub:
        for public, repo in ((False, "me/private-adapters"), (True, "me/public-adapters")):
            config = AppConfig(weak_model=str(tiny_model_dir), data_dir=tmp_path / repo, packs=("packs/general",),
                               hub_repo=repo, hub_endpoint=hub.endpoint, hub_public=public)
            control = build_control(config, service)
            control.publisher.stop()
            adapter = make_lora_adapter(tiny_model_dir, tmp_path / repo / "v1", seed=1)
            control.publisher.push_adapter(adapter, "general-v1", "# card", subfolder="general")
            assert hub.repo(repo, "model").private is (not public)
            control.shutdown()


def test_the_model_card_tells_consumers_what_they_need(tmp_path, tiny_adapters):
    from huggingface_hub import ModelCard

    from cowest_app.domains.packs import load_pack
    from cowest_app.loop.training_job import adapter_card

    config = AppConfig(data_dir=tmp_path / "data", hub_log_repo="me/cowest-log")  # weak model: the packaged SmolLM2
    registry = AdapterRegistry(tmp_path / "adapters")
    registry.import_adapter(tiny_adapters["v1"], metrics={"candidate_score": 0.61, "active_score": 0.55})
    pack = load_pack("packs/saltmarsh-formulary")
    card = ModelCard(adapter_card(config, pack, registry, "v1", "me/cowest-adapters"))
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the packaged model's Hub repo, loadable by anyone
    assert (data.library_name, data.pipeline_tag, data.datasets) == ("peft", "text-generation", ["me/cowest-log"])
    assert "saltmarsh-formulary" in data.tags
    assert {(r.metric_name, r.metric_value) for r in data.eval_results} == {
        ("held-out collaboration score", 0.61), ("previous version's score", 0.55)}
    # The drafting template it was trained on (this pack drafts from retrieved passages), and how to load it.
    assert pack.prompts["weak_retrieval"].user in card.text and "{context}" in card.text
    assert 'revision="saltmarsh-formulary-v1", subfolder="saltmarsh-formulary"' in card.text


def test_rollback_reaches_the_hub_and_the_table_shows_each_push(tmp_path, tiny_model_dir, tiny_adapters, monkeypatch):
    from cowest_app.config import Secrets
    from cowest_app.loop.control import build_control
    from tests.fakes.hub_server import serve_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with serve_hub() as hub:
        config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                           packs=("packs/general",), hub_repo="me/adapters", hub_endpoint=hub.endpoint,
                           secrets=Secrets(admin_secret="s3cret"))
        service = CollabService(config, TransformersBackend(str(tiny_model_dir)), ScriptedBackend(["ok"]),
                                LogStore(config.db_path))
        control = build_control(config, service)
        control.publisher.stop()  # started by build_control; held until the table has shown "pending"
        registry = control.registry
        for name in ("v1", "v2"):
            registry.import_adapter(tiny_adapters[name])
            control.job.push(name)
        assert [row["hub"] for row in control.history()] == ["pending", "pending"]
        control.publisher.start()
        assert control.publisher.wait_idle(timeout=30), control.publisher.status()
        assert [row["hub"] for row in control.history()] == ["pushed as general-v2", "pushed as general-v1"]
        tags = hub.repo("me/adapters").tags
        assert tags["general-active"] == tags["general-v2"]

        assert control.rollback("s3cret", "v1") == "general: active adapter is now v1"
        assert control.publisher.wait_idle(timeout=30)
        assert hub.repo("me/adapters").tags["general-active"] == tags["general-v1"]
        control.rollback("s3cret", None)
        assert control.publisher.wait_idle(timeout=30)
        assert "general-active" not in hub.repo("me/adapters").tags

        hub.fail_next(100, status=403)  # a push that fails for good is shown with its reason
        registry.import_adapter(tiny_adapters["v2"], promote=False)
        control.job.push("v3")
        wait = control.publisher.wait_idle(timeout=30)
        assert wait and control.history()[0]["hub"].startswith("failed: authentication failed (HTTP 403)")
        control.shutdown()


def test_only_an_admin_exports_the_pairs(tmp_path, tiny_model_dir):
    import json

    import pytest

    from cowest_app.config import Secrets
    from cowest_app.loop.control import AdminError
    from tests.cowest_app.core.test_rows import PAIR

    config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                       packs=("packs/general",), secrets=Secrets(admin_secret="s3cret"))
    service = CollabService(config, ScriptedBackend(["d"]), ScriptedBackend(["ok"]), LogStore(config.db_path))
    service.store.log_pair(PAIR)
    control = TrainingControl(config, service, AdapterRegistry(config.pack_adapters_dir("general")), start=False)
    with pytest.raises(AdminError, match="Wrong admin secret"):
        control.export_pairs("guess")
    [row] = [json.loads(line) for line in control.export_pairs("s3cret").read_text().splitlines()]
    assert row["chosen"] == [{"role": "assistant", "content": PAIR.chosen}] and row["evaluator"] == "reference"
