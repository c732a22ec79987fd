"""The log as flat rows with fixed columns: one shape for the Hub dataset mirror, the
preference-pair export and the restore after a wiped disk.

Three tables, each a `datasets` config of the mirror:

* `interactions`: one row per question asked (`timings` as a JSON string, since its keys vary);
* `feedback`: one row per rating / best pick / comment, pointing at its interaction;
* `pairs`: one preference pair per row in TRL's conversational format (`prompt`, `chosen`,
  `rejected` as message lists), so `DPOTrainer` reads the file as it is, plus its
  provenance (evaluator, confidence, scores, the interactions it came from).

Every `*_row` has a matching `*_from_row`, so a mirror read back gives the store what it
held, ids included (training resumes from the last pair id it consumed). Pure functions.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from cowest_app.core.store import FEEDBACK_COLUMNS, INTERACTION_COLUMNS, Feedback, Interaction, PreferencePair

TABLES = ("interactions", "feedback", "pairs")


def interaction_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record of `LogStore.iter_records` without its nested feedback."""
    row = {name: record[name] for name in INTERACTION_COLUMNS if name != "timings"}
    row["timings_json"] = json.dumps(record.get("timings") or {}, ensure_ascii=False, sort_keys=True)
    return row


def interaction_from_row(row: Mapping[str, Any]) -> Interaction:
    # Shards written before `timings_json` carried `timings` as an object.
    timings = row.get("timings") or json.loads(row.get("timings_json") or "{}")
    fields = {name: row.get(name) for name in INTERACTION_COLUMNS if name != "timings"}
    return Interaction(**fields, timings=timings)


def feedback_row(interaction_id: str, event: Mapping[str, Any]) -> dict[str, Any]:
    return {"interaction_id": interaction_id, **{name: event.get(name) for name in FEEDBACK_COLUMNS if name != "interaction_id"}}


def feedback_from_row(row: Mapping[str, Any]) -> Feedback:
    return Feedback(**{name: row.get(name) for name in FEEDBACK_COLUMNS})


def pair_row(pair: PreferencePair) -> dict[str, Any]:
    return {
        "id": pair.id,
        "created_at": pair.created_at,
        "domain": pair.domain,
        "question": pair.question,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in pair.prompt],
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        "margin": pair.margin,
        "chosen_score": pair.chosen_score,
        "rejected_score": pair.rejected_score,
        "evaluator": pair.evaluator,
        "confidence": pair.confidence,
        "trainable": pair.trainable,
        "interaction_ids": list(pair.interaction_ids),
        "details_json": json.dumps(pair.details, ensure_ascii=False, sort_keys=True, default=str),
        "weak_model": pair.weak_model,
        "strong_model": pair.strong_model,
        "adapter_version": pair.adapter_version,
    }


def pair_from_row(row: Mapping[str, Any]) -> PreferencePair:
    return PreferencePair(
        id=row.get("id"), created_at=row.get("created_at"), domain=row["domain"], question=row["question"],
        prompt=[dict(m) for m in row["prompt"]], chosen=_reply(row["chosen"]), rejected=_reply(row["rejected"]),
        margin=row["margin"], chosen_score=row.get("chosen_score"), rejected_score=row.get("rejected_score"),
        evaluator=row["evaluator"], confidence=row.get("confidence"), trainable=bool(row.get("trainable", True)),
        interaction_ids=tuple(row.get("interaction_ids") or ()), details=json.loads(row.get("details_json") or "{}"),
        weak_model=row.get("weak_model"), strong_model=row.get("strong_model"),
        adapter_version=row.get("adapter_version"),
    )


def _reply(messages: list[Mapping[str, str]]) -> str:
    """The assistant text of a one-message `chosen` / `rejected` list."""
    if len(messages) != 1 or messages[0].get("role") != "assistant":
        raise ValueError(f"expected one assistant message, got {len(messages)} messages")
    return messages[0]["content"]


# Column types, written into the dataset card so `load_dataset` never has to guess them
# from a first shard whose optional columns are all null.
_STRING, _MESSAGES = "string", [{"role": "string", "content": "string"}]
FEATURES: dict[str, dict[str, Any]] = {
    "interactions": {**{name: _STRING for name in INTERACTION_COLUMNS if name != "timings"}, "timings_json": _STRING},
    "feedback": {"interaction_id": _STRING, "id": "int64", "created_at": _STRING, "session_id": _STRING,
                 "rating": "int8", "best": _STRING, "comment": _STRING},
    "pairs": {"id": "int64", "created_at": _STRING, "domain": _STRING, "question": _STRING, "prompt": _MESSAGES,
              "chosen": _MESSAGES, "rejected": _MESSAGES, "margin": "float64", "chosen_score": "float64",
              "rejected_score": "float64", "evaluator": _STRING, "confidence": "float64", "trainable": "bool",
              "interaction_ids": [_STRING], "details_json": _STRING, "weak_model": _STRING,
              "strong_model": _STRING, "adapter_version": _STRING},
}


def card_features(table: str) -> list[dict[str, Any]]:
    """`FEATURES[table]` in the dataset card's `dataset_info.features` YAML layout."""
    return [_card_feature(name, kind) for name, kind in FEATURES[table].items()]


def _card_feature(name: str, kind: Any) -> dict[str, Any]:
    if isinstance(kind, str):
        return {"name": name, "dtype": kind}
    if isinstance(kind, list) and isinstance(kind[0], str):
        return {"name": name, "list": kind[0]}
    return {"name": name, "list": [{"name": key, "dtype": dtype} for key, dtype in kind[0].items()]}
