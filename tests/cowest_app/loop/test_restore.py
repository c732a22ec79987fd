"""A Space's disk is wiped on restart: everything comes back from the Hub stand-in.

Collect feedback, train v1 and v2 (real DPO steps on a tiny model), push both and the
log mirror; delete the data directory; restart the way app.py does (restore, then build
the weak model from the registries); v2 is served and named by the next answer, the log
rows and pairs are back with their ids, and the next cycle trains and pushes v3.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

from huggingface_hub import HfApi

from cowest_app.core.store import LogStore
from cowest_app.hub.log_sync import write_log_shards
from cowest_app.hub.publish import start_log_sync
from cowest_app.loop.control import build_publisher
from cowest_app.loop.registry import AdapterRegistry
from cowest_app.loop.restore import restore_from_hub
from cowest_app.loop.training_job import TrainingJob
from cowest_app.serving.service import CollabService, build_weak, load_served_packs
from tests.cowest_app.loop.test_training_job import setup  # noqa: F401 - the shared fixture
from tests.fakes.hub_server import serve_hub

TOKEN = "hf_tok_never_shown"
MODEL_REPO, LOG_REPO = "cowest/weak-adapter", "cowest/feedback-log"


def cycle(config, service, publisher) -> str:
    job = TrainingJob(config, service, AdapterRegistry(config.pack_adapters_dir("general")), publisher)
    result = job.run_cycle()
    assert publisher.wait_idle(timeout=60), publisher.status()
    return result


def mirror_log(config, store: LogStore, endpoint: str) -> None:
    folder = config.data_dir / "hub_log"
    write_log_shards(store, folder)
    scheduler = start_log_sync(folder, LOG_REPO, TOKEN, endpoint, every_minutes=60)
    try:
        scheduler.trigger().result(timeout=30)
    finally:
        scheduler.stop()


def test_a_wiped_disk_comes_back_from_the_hub_and_numbering_goes_on(setup, monkeypatch):  # noqa: F811
    config, service = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with serve_hub(require_token=TOKEN) as hub:
        config = replace(config, collect_max_questions=4, hub_repo=MODEL_REPO, hub_log_repo=LOG_REPO,
                         hub_endpoint=hub.endpoint)
        publisher = build_publisher(config)
        publisher.start()
        assert cycle(config, service, publisher).startswith("v1 promoted")
        assert cycle(config, service, publisher).startswith("v2 promoted")
        publisher.stop()
        registry = AdapterRegistry(config.pack_adapters_dir("general"))
        assert registry.get("v2").hub["tag"] == "general-v2"  # recorded by the queue's on_done
        tags = hub.repo(MODEL_REPO).tags
        assert tags["general-active"] == tags["general-v2"]
        mirror_log(config, service.store, hub.endpoint)
        before_records = list(service.store.iter_records())
        before_pairs = list(service.store.iter_pairs(trainable_only=False))

        shutil.rmtree(config.data_dir)  # the restart of a Space without persistent storage

        report = restore_from_hub(config)
        assert report.errors == [] and report.adapters == ["general v1", "general v2"]
        assert report.active == {"general": "v2"}
        store = LogStore(config.db_path)
        assert list(store.iter_records()) == before_records
        assert list(store.iter_pairs(trainable_only=False)) == before_pairs
        weak = build_weak(config, load_served_packs(config))
        restarted = CollabService(config, weak, service.strong, store)
        last = list(restarted.ask("What is the capital of France?", "general"))[-1]
        assert last.snapshot.stages["weak_draft"].info["adapter_version"] == "v2"

        publisher = build_publisher(config)
        publisher.start()
        assert cycle(config, restarted, publisher).startswith("v3 promoted")
        publisher.stop()
        tags = hub.repo(MODEL_REPO).tags
        assert {"general-v1", "general-v2", "general-v3"} <= set(tags)
        assert tags["general-active"] == tags["general-v3"]
        assert AdapterRegistry(config.pack_adapters_dir("general")).get("v3").parent == "v2"


def test_numbering_skips_versions_already_on_the_hub(setup, monkeypatch):  # noqa: F811
    """The Hub holds general-v1..v2 from before, the local disk nothing (restore was not run):
    the next run is v3, not a second v1."""
    config, service = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with serve_hub(require_token=TOKEN) as hub:
        config = replace(config, collect_max_questions=4, hub_repo=MODEL_REPO, hub_endpoint=hub.endpoint)
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(MODEL_REPO)
        head = api.list_repo_refs(MODEL_REPO).branches[0].target_commit
        for n in (1, 2):
            api.create_tag(MODEL_REPO, tag=f"general-v{n}", revision=head)
        publisher = build_publisher(config)
        publisher.start()
        assert cycle(config, service, publisher).startswith("v3 promoted")
        publisher.stop()
