"""One scheduled cycle with the embedded weak model, and serving latency while it trains.

    .venv/bin/python -m bench.cycle [--pairs 64] [--eval-items 8] [--questions 10]

1. Seeds N preference pairs (built from the shipped held-out questions: a draft
   with the right answer is chosen over one with a wrong answer), so the cycle
   time below excludes collection; `bench/collect.py` measures collection.
2. Times one `TrainingJob.run_cycle(force=True)` phase by phase: DPO in the child
   process (QLoRA on NF4 SmolLM2-135M, one epoch), the held-out gate, the hot
   swap and the push to a Hub stand-in on 127.0.0.1.
3. Answer latency of the app service over the same questions, idle (baseline)
   and while a DPO child process trains, printed with the ratio.

Strong model: SmolLM2 as well (the `fast` profile), so the gate stays short on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cowest_app.domains.packs import load_pack
from cowest_app.config import WEAK_DEFAULT, AppConfig
from cowest_app.loop.registry import AdapterRegistry
from cowest_app.serving.service import CollabService
from cowest_app.core.store import LogStore, PreferencePair
from cowest_app.loop.training_job import DEFAULT_EVAL_FILE, TrainingJob, load_items

ROOT = Path(__file__).resolve().parents[1]


def seed_pairs(store: LogStore, n: int) -> None:
    """n trainable pairs from the shipped held-out questions: the right answer's draft over a wrong one's."""
    items = load_items(DEFAULT_EVAL_FILE)
    wrong = [i.item.reference for i in items[1:]] + [items[0].item.reference]
    general = load_pack("packs/general")  # the domain of the shipped held-out questions
    for k in range(n):
        item, bad = items[k % len(items)].item, wrong[k % len(items)]
        store.log_pair(PreferencePair(
            domain="general", question=item.question, prompt=general.weak_messages(item.question),
            chosen=f"Background: a well-known fact.\nDraft answer: {item.reference}.",
            rejected=f"Background: a well-known fact.\nDraft answer: {bad}.",
            margin=1.0, evaluator="reference", chosen_score=1.0, rejected_score=0.0, confidence=1.0,
        ))


def latencies(service: CollabService, questions: list[str]) -> list[float]:
    out = []
    for q in questions:
        started = time.perf_counter()
        list(service.ask(q, "general"))
        out.append(time.perf_counter() - started)
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timed_phases(job: TrainingJob) -> tuple[str, dict[str, float]]:
    phases: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        last, since = "idle", time.perf_counter()
        while not done.is_set():
            phase = job.snapshot()["phase"]
            if phase != last:
                now = time.perf_counter()
                phases[last] = phases.get(last, 0.0) + now - since
                last, since = phase, now
            time.sleep(0.05)
        phases[last] = phases.get(last, 0.0) + time.perf_counter() - since

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    result = job.run_cycle(force=True)
    total = time.perf_counter() - started
    done.set()
    watcher.join()
    phases.pop("idle", None)
    phases["total cycle"] = total
    return result, phases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--eval-items", type=int, default=8)
    parser.add_argument("--questions", type=int, default=10)
    args = parser.parse_args()

    from tests.fakes.hub_server import serve_hub  # the same Hub stand-in the tests use

    work = Path(tempfile.mkdtemp(prefix="cowest-bench-"))
    recipe = work / "dpo.yaml"
    recipe.write_text((ROOT / "training/recipes/dpo.yaml").read_text().replace("num_train_epochs: 3", "num_train_epochs: 1"))
    config = AppConfig(profile="fast", weak_model=WEAK_DEFAULT, strong_model=WEAK_DEFAULT, data_dir=work / "data",
                       weak_max_new_tokens=48, strong_max_new_tokens=48, eval_max_items=args.eval_items,
                       eval_tolerance=1.0, train_recipe=recipe, train_threads=1, hub_repo="bench/adapter")
    service = CollabService.build(config)
    # Latency probes log to their own store, so the job has no questions to collect on.
    probe = CollabService(config, service.weak, service.strong, LogStore(work / "probe.sqlite3"))
    questions = [i.item.question for i in load_items(DEFAULT_EVAL_FILE)][: args.questions]
    latencies(probe, questions[:1])  # warm-up

    idle = latencies(probe, questions)

    seed_pairs(service.store, args.pairs)
    with serve_hub() as hub:
        from cowest_app.hub.publish import HubPublisher

        publisher = HubPublisher(config.hub_repo, "hf_bench", hub.endpoint, queue_path=work / "queue.json")
        publisher.start()
        job = TrainingJob(config, service, AdapterRegistry(config.adapters_dir), publisher)
        result, phases = timed_phases(job)
        started = time.perf_counter()
        publisher.wait_idle(timeout=120)
        phases["push (background)"] = time.perf_counter() - started
        publisher.stop()
    metrics = json.loads((config.adapters_dir / "v1" / "metrics.json").read_text()) if (config.adapters_dir / "v1").exists() else {}

    # Serving while a DPO child trains (a second run, on the same pairs).
    busy_recipe = work / "busy.yaml"
    busy_recipe.write_text(recipe.read_text().replace("num_train_epochs: 1", "num_train_epochs: 50"))
    busy_job = TrainingJob(config.with_overrides(train_recipe=busy_recipe, data_dir=work / "busy"), service,
                           AdapterRegistry(work / "busy" / "adapters"))
    runner = threading.Thread(target=busy_job.run_cycle, kwargs={"force": True})
    runner.start()
    while busy_job.snapshot()["phase"] != "training" or busy_job.snapshot()["step"] < 1:
        time.sleep(0.5)
    training = latencies(probe, questions)
    busy_job.stop()
    runner.join()

    print(f"cycle: {result}")
    print("\n| phase | seconds |\n|---|---|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"\nDPO: {metrics.get('n_pairs')} pairs, {metrics.get('steps')} steps, "
          f"{metrics.get('pairs_per_second', 0):.2f} pairs/s, loss {metrics.get('first_loss')} -> {metrics.get('final_loss')}")
    print("\n| app answer latency (s) | p50 | p95 | p95 x idle |\n|---|---|---|---|")
    for name, values in (("idle (baseline)", idle), ("while DPO trains", training)):
        print(f"| {name} | {statistics.median(values):.2f} | {p95(values):.2f} | {p95(values) / p95(idle):.2f} |")


if __name__ == "__main__":
    main()
