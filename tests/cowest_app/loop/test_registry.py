from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cowest_app.loop.registry import AdapterRegistry, AdapterVersion, RegistryError


def fake_training_output(directory: Path) -> Path:
    (directory / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    return directory


def add(registry: AdapterRegistry, **fields) -> AdapterVersion:
    version = registry.next_version()
    staged = fake_training_output(registry.staging_dir(version))
    return registry.register(staged, AdapterVersion(version=version, status="candidate", **fields))


def test_versions_are_numbered_and_registered_atomically(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    assert registry.next_version() == "v1" and registry.active() is None
    v1 = add(registry, n_pairs=64, data_hash="abc", metrics={"loss": 0.5})
    assert v1.version == "v1" and registry.next_version() == "v2"
    assert (tmp_path / "v1" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not list(tmp_path.glob(".staging-*"))
    assert registry.get("v1").metrics == {"loss": 0.5}


def test_version_ordering_is_numeric(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    for _ in range(11):
        add(registry)
    assert [v.version for v in registry.versions()][-3:] == ["v9", "v10", "v11"]


def test_promote_archives_previous_and_rollback(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    add(registry)
    add(registry, parent="v1")
    registry.promote("v1")
    registry.promote("v2")
    assert registry.active().version == "v2"
    assert registry.get("v1").status == "archived"
    registry.promote("v1")  # roll back
    assert registry.active().version == "v1" and registry.get("v2").status == "archived"
    registry.promote(None)  # back to the bare base model
    assert registry.active() is None and registry.get("v1").status == "archived"


def test_half_written_staging_is_discarded_and_its_number_skipped(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    add(registry)
    staging = registry.staging_dir(registry.next_version())
    (staging / "adapter_model.safetensors").write_bytes(b"half")
    assert registry.next_version() == "v3"  # a staging dir holds its number until discarded
    assert registry.discard_staging() == [".staging-v2"]
    assert [v.version for v in registry.versions()] == ["v1"]


def test_register_refuses_a_directory_without_an_adapter(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    staged = registry.staging_dir("v1")
    with pytest.raises(RegistryError, match="adapter_config.json missing"):
        registry.register(staged, AdapterVersion(version="v1", status="candidate"))


def test_failed_runs_are_recorded_and_cannot_be_promoted(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    registry.record_failure("v1", "child process killed", n_pairs=10)
    assert registry.get("v1").status == "failed" and registry.get("v1").error == "child process killed"
    with pytest.raises(RegistryError, match="no usable adapter"):
        registry.promote("v1")
    assert registry.next_version() == "v2"


def test_bad_names_and_statuses(tmp_path: Path):
    registry = AdapterRegistry(tmp_path)
    with pytest.raises(RegistryError, match="not a version name"):
        registry.get("../etc")
    with pytest.raises(RegistryError, match="no adapter version"):
        registry.get("v7")
    add(registry)
    with pytest.raises(RegistryError, match="unknown status"):
        registry.update("v1", status="great")


def test_zip_holds_adapter_and_card_never_the_training_data(tmp_path: Path):
    registry = AdapterRegistry(tmp_path / "adapters")
    add(registry)
    # A version folder also holds what trained it: users' questions must not leave with the weights.
    (registry.path("v1") / "train.jsonl").write_text('{"prompt": "a user\'s private question"}\n')
    (registry.path("v1") / "README.md").write_text("peft's own card")
    out = registry.zip("v1", "# card", tmp_path / "out")
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["v1/README.md", "v1/adapter_config.json", "v1/adapter_model.safetensors", "v1/cowest.json"]
        assert archive.read("v1/README.md") == b"# card"


def test_an_adapter_trained_elsewhere_is_imported_as_the_next_active_version(tmp_path, tiny_adapters):
    from cowest_app.loop.registry import main

    registry = AdapterRegistry(tmp_path / "data" / "adapters" / "general")
    first = registry.import_adapter(tiny_adapters["v1"], metrics={"note": "shipped"})
    assert (first.version, first.status, first.metrics) == ("v1", "active", {"note": "shipped"})
    assert (registry.path("v1") / "adapter_model.safetensors").read_bytes() == \
        (tiny_adapters["v1"] / "adapter_model.safetensors").read_bytes()
    # One command registers a pipeline's adapter for a served pack (under data/adapters/<pack name>).
    assert main(["--pack", "packs/general", "--adapter", str(tiny_adapters["v2"]), "--data-dir", str(tmp_path / "data")]) == 0
    assert registry.active().version == "v2" and registry.get("v1").status == "archived"
    with pytest.raises(SystemExit):
        main(["--pack", "packs/general", "--adapter", str(tmp_path), "--data-dir", str(tmp_path / "data")])  # no adapter there
