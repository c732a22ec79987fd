"""The learning loop unchanged on a weak model behind a LoRA-serving server (a vLLM stand-in).

Feedback collection samples K drafts in one `n=K` request, DPO trains locally on the same
tiny base, the gate loads the candidate on the server beside the served adapter, and the
promoted version is served by name: the next answer records it.
"""

from __future__ import annotations

import itertools

from cowest_app.loop.registry import AdapterRegistry
from cowest_app.loop.training_job import TrainingJob
from cowest_app.models.lora_server import LoraServerBackend
from cowest_app.serving.service import CollabService
from tests.cowest_app.loop.test_training_job import setup  # noqa: F401 - the shared fixture
from tests.fakes.openai_server import serve_openai


def test_a_cycle_trains_gates_and_serves_through_the_server(setup):  # noqa: F811
    config, local_service = setup
    drafts = itertools.count()
    with serve_openai(reply=lambda messages: f"Background: fact {next(drafts)}.", model=config.weak_model,
                      serve_loras=True) as server:
        weak = LoraServerBackend(config.weak_model, server.base_url)
        service = CollabService(config, weak, local_service.strong, local_service.store)
        registry = AdapterRegistry(config.pack_adapters_dir("general"))
        result = TrainingJob(config, service, registry).run_cycle()

        assert result.startswith("v1 promoted"), result
        samples = [r.body for r in server.requests if (r.body.get("n") or 1) > 1]
        assert samples and all(b["n"] == config.feedback_k and b["model"] == config.weak_model for b in samples)
        assert set(server.loras) == {"general-v1"}  # the gate's candidate slot was unloaded from the app's view
        gate_models = {r.body.get("model") for r in server.requests
                       if r.path.endswith("completions") and (r.body.get("n") or 1) == 1}
        # general drafts only with a specialist and had none: the candidate was judged against the strong model alone
        assert "candidate-v1" in gate_models
        assert server.loras["general-v1"] == str(registry.path("v1"))

        before = len(server.requests)
        last = list(service.ask("What is the capital of France?", "general"))[-1]
        assert service.store.get_interaction(last.interaction_id).adapter_version == "v1"
        assert {r.body["model"] for r in server.requests[before:]} == {"general-v1"}  # drafts (a re-draft too), by name
