"""Domain packs: one directory describes a domain the weak model is specialised on.

    my-pack/
      domain.yaml    name, description, task_type, metric, labels, prompt templates
      corpus/        .md / .txt documents: the facts the weak model learns
      train.jsonl    {"id", "question", "answer", "options"?, "kind"?, "fact_ids"?} per line
      test.jsonl     the same; held out for evaluation

`load_pack` validates everything up front and reports up to `MAX_ERRORS`
problems at once, each naming the file (and the line, for JSONL and YAML
fields), so a pack author fixes a broken pack in one pass rather than one
error per run.

Prompt templates are filled by replacing `{question}`, `{draft}` and
`{context}` in one pass; other braces stay literal, so templates need no
escaping and a question that itself contains "{draft}" is never re-expanded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import yaml

from cowest_app.core import prompts as app_prompts
from cowest_app.domains import retrieval
from cowest_app.core.feedback import TASK_TYPES, Reference, exact_match, normalize_answer, score_with_reference, token_f1
from cowest_app.models.base import Message

if TYPE_CHECKING:  # collect imports torch (through the evaluators); load it only when asked
    from cowest_app.core.feedback import QuestionItem

# Metrics each task type may use. "contains_f1" is score_with_reference's
# short-answer metric: 1.0 when the answer contains a reference alias, else token F1.
METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("accuracy",),
    "label": ("accuracy",),
    "short_answer": ("contains_f1", "exact_match", "token_f1"),
}
KINDS = ("recall", "reasoning")
SPLITS = ("train", "test")
# The dev split is carved from train's tail: it chooses settings and gates candidates, while feedback
# and DPO learn from the rest ("fit"); test is read once, for the report.
DERIVED_SPLITS = ("dev", "fit")
DEV_FRACTION = 0.1
DEV_MIN = 8  # small packs: up to this many, but never more than half of train
DEV_MAX = 60
CORPUS_SUFFIXES = (".md", ".txt")
LETTERS = "ABCDE"  # at most five options, as in the public multiple-choice sets
MAX_ERRORS = 20
SHIPPED_ADAPTER_DIR = "adapter"  # optional: the adapter the pack's pipeline trained, shipped beside domain.yaml
SHIPPED_RECORD = "shipped.json"  # in it: the command, data hash and results that made that adapter
DEFAULT_RETRIEVAL_PASSAGES = 4  # passages a weak model drafts from when a pack turns retrieval on without a number

# Placeholders each template's user message must contain.
REQUIRED_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "weak": ("question",),
    "strong": ("question", "draft"),
    "direct": ("question",),
    "rag": ("context", "question"),
    "weak_retrieval": ("context", "question"),  # retrieval-grounded drafting: the weak model reads passages
}
_PLACEHOLDER = re.compile(r"\{(question|draft|context)\}")
_Report = Callable[[str, str], None]  # (yaml key path, message): records a domain.yaml error at the key's line


class PackError(ValueError):
    """A pack that cannot be used; `errors` holds one located message per problem."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors) or [message]


# -- data types ---------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    system: str
    user: str

    def render(self, **values: str) -> list[Message]:
        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

        return [{"role": "system", "content": fill(self.system)}, {"role": "user", "content": fill(self.user)}]


@dataclass(frozen=True)
class PackItem:
    id: str
    question: str
    # multiple_choice: the correct letter ("A".."E"); label: the label as spelled
    # in the pack's labels; short_answer: the tuple of accepted aliases.
    answer: str | tuple[str, ...]
    options: tuple[str, ...] | None = None  # multiple_choice only
    kind: str | None = None  # "recall" | "reasoning"
    fact_ids: tuple[str, ...] = ()

    @property
    def reference(self) -> Reference:
        """What `feedback.score_with_reference` takes: an option index, a label or the aliases."""
        if self.options is not None:
            return LETTERS.index(str(self.answer))
        if isinstance(self.answer, tuple):
            return self.answer[0] if len(self.answer) == 1 else self.answer
        return self.answer


@dataclass(frozen=True)
class DomainPack:
    name: str
    description: str
    task_type: str
    metric: str
    labels: tuple[str, ...]
    prompts: Mapping[str, PromptTemplate]  # "weak", "strong", "direct", "rag"
    corpus_paths: tuple[Path, ...]
    train: tuple[PackItem, ...]
    test: tuple[PackItem, ...]
    root: Path
    digest: str = field(default="", repr=False)  # sha256 of the files as loaded
    # Retrieval-grounded drafting: the weak model drafts from this many retrieved passages (0: from memory).
    retrieval_passages: int = 0
    title: str = ""  # how the app names the pack; "" shows `name`
    examples: tuple[str, ...] = ()  # example questions the app offers for this pack
    # What the strong model reads of a draft: all of it, or (`background`) the facts without the
    # weak model's own answer, which a strong model tends to copy even when it is wrong.
    notes: str = "draft"
    # The final answer's token budget in the app for this domain (None: the app's own
    # COWEST_STRONG_MAX_NEW_TOKENS); the smaller of the two applies.
    answer_tokens: int | None = None
    # Who drafts: `always` the weak model, or (`specialist`) only where it is one for this pack,
    # drafting from retrieved passages or through an adapter trained for it; elsewhere the strong
    # model answers alone (on the general set an unspecialised draft cost it 7.9 points).
    drafts: str = "always"

    def drafts_with(self, specialised: bool) -> bool:
        """Whether the weak model drafts here; `specialised`: it serves an adapter trained for this pack."""
        return self.drafts == "always" or specialised or self.retrieval_passages > 0

    def split(self, name: str) -> tuple[PackItem, ...]:
        if name not in SPLITS + DERIVED_SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS + DERIVED_SPLITS}")
        return {"train": self.train, "test": self.test, "dev": self.dev, "fit": self.fit}[name]

    @property
    def dev_size(self) -> int:
        """Train's last 10%, at least min(8, half of train), at most 60 items."""
        n = len(self.train)
        return min(DEV_MAX, max(round(n * DEV_FRACTION), min(DEV_MIN, n // 2)))

    @property
    def dev(self) -> tuple[PackItem, ...]:
        """Held out of feedback and DPO: where settings are chosen and candidates gated."""
        return self.train[len(self.train) - self.dev_size:]

    @property
    def fit(self) -> tuple[PackItem, ...]:
        """Train without the dev split: what feedback and DPO learn from."""
        return self.train[:len(self.train) - self.dev_size]

    # Messages take the question as the models see it: `format_item(item)`.
    def weak_messages(self, question_text: str) -> list[Message]:
        return self.prompts["weak"].render(question=question_text)

    def draft_messages(self, question_text: str, grounded: bool) -> list[Message]:
        """The weak model's drafting prompt: from memory, or grounded in the passages retrieved for the question."""
        if not grounded:
            return self.weak_messages(question_text)
        passages = self.retriever.search(question_text, self.retrieval_passages or DEFAULT_RETRIEVAL_PASSAGES)
        return self.prompts["weak_retrieval"].render(question=question_text, context=retrieval.render_context(passages))

    @cached_property
    def passages(self) -> tuple[retrieval.Passage, ...]:
        """The corpus as bounded passages (cowest_app.domains.retrieval), for RAG and drafting alike."""
        return tuple(retrieval.split_passages((p.name, p.read_text(encoding="utf-8")) for p in self.corpus_paths))

    @cached_property
    def retriever(self) -> retrieval.Retriever:
        return retrieval.Retriever(self.passages)

    def strong_messages(self, question_text: str, draft: str) -> list[Message]:
        if self.notes == "background":
            draft = app_prompts.background_only(draft)
        return self.prompts["strong"].render(question=question_text, draft=draft.strip() or app_prompts.NO_NOTES)

    def direct_messages(self, question_text: str) -> list[Message]:
        return self.prompts["direct"].render(question=question_text)

    def rag_messages(self, question_text: str, context: str) -> list[Message]:
        return self.prompts["rag"].render(question=question_text, context=context.strip() or "(no context found)")

    def prompt_set(self, grounded: bool = False) -> app_prompts.PromptSet:
        """The pack's templates for `collect`: the weak model is aligned on the
        drafting prompt it is evaluated with."""
        return app_prompts.PromptSet(draft=lambda q: self.draft_messages(q, grounded), refine=self.strong_messages,
                         direct=self.direct_messages)

    def score(self, answer_text: str, item: PackItem) -> float:
        """The pack's metric for one answer, in [0, 1]."""
        if self.task_type == "short_answer" and self.metric in ("exact_match", "token_f1"):
            metric = exact_match if self.metric == "exact_match" else token_f1
            return max(metric(answer_text, alias) for alias in item.answer)
        options = item.options if self.task_type == "multiple_choice" else self.labels
        return score_with_reference(answer_text, item.reference, self.task_type, options)  # type: ignore[arg-type]

    def question_items(self, split: str) -> list[QuestionItem]:
        """The split as questions for `collect.collect`.

        Multiple-choice options travel with each question (the collector shows
        them lettered). Labels do not, as lettering them would invite "B" for
        an answer: score label packs with `ReferenceEvaluator("label", pack.labels)`.
        """
        from cowest_app.core.feedback import QuestionItem

        return [QuestionItem(item.question, self.name, item.reference, item.options) for item in self.split(split)]

    def corpus_texts(self) -> list[str]:
        return [path.read_text(encoding="utf-8") for path in self.corpus_paths]

    def fingerprint(self) -> str:
        """sha256 over domain.yaml, the corpus and both splits, as loaded: a
        resumable pipeline compares it to detect changed inputs."""
        return self.digest


def format_item(item: PackItem) -> str:
    """The question as every model sees it: lettered options appended for multiple choice."""
    from cowest_app.core.prompts import format_question  # one formatter for packs and the collector

    return format_question(item.question, item.options)


# -- item validation ----------------------------------------------------------


def _item_problems(row: Any, task_type: str | None, labels: Sequence[str]) -> tuple[PackItem | None, list[str]]:
    """(item, problems) for one JSON row; task_type None checks only what does not depend on it."""
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, got {type(row).__name__}"]
    problems: list[str] = []
    item_id = row.get("id")
    if not isinstance(item_id, str) or not item_id.strip():
        problems.append("missing or empty 'id' (a string)")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append("missing or empty 'question'")
    kind = row.get("kind")
    if kind is not None and kind not in KINDS:
        problems.append(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    fact_ids = row.get("fact_ids", [])
    if not isinstance(fact_ids, list) or not all(isinstance(f, str) for f in fact_ids):
        problems.append("'fact_ids' must be a list of strings")
        fact_ids = []
    answer = row.get("answer")
    if answer is None or answer == "" or answer == [] or (isinstance(answer, str) and not answer.strip()):
        problems.append("missing or empty 'answer'")
        answer = None
    options = row.get("options")
    if task_type == "multiple_choice":
        options = _check_options(options, problems)
        if answer is not None and options is not None:
            answer = _choice_letter(answer, options, problems)
    elif options is not None and task_type is not None:
        problems.append(f"'options' are only for multiple_choice items, not {task_type}")
    elif task_type == "label" and answer is not None:
        answer = _label(answer, labels, problems)
    elif task_type == "short_answer" and answer is not None:
        answer = _aliases(answer, problems)
    if problems or task_type is None:
        return None, problems
    return PackItem(item_id.strip(), question.strip(), answer, options, kind, tuple(fact_ids)), []


def _check_options(options: Any, problems: list[str]) -> tuple[str, ...] | None:
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        problems.append(f"a multiple_choice item needs 'options': a list of 2 to {len(LETTERS)} strings")
        return None
    if not all(isinstance(o, str) and o.strip() for o in options):
        problems.append("every option must be a non-empty string")
        return None
    normalised = [normalize_answer(o) or o.strip() for o in options]
    if len(set(normalised)) != len(normalised):
        problems.append("two options are the same text, so an answer naming it is ambiguous")  # scoring by text breaks
        return None
    return tuple(o.strip() for o in options)


def _choice_letter(answer: Any, options: Sequence[str], problems: list[str]) -> str | None:
    letters = LETTERS[: len(options)]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return letters[answer]
    if isinstance(answer, str) and answer.strip().upper() in letters and len(answer.strip()) == 1:
        return answer.strip().upper()
    problems.append(f"answer {answer!r} is not among the options (a letter {letters[0]}-{letters[-1]} or an index 0-{len(options) - 1})")
    return None


def _label(answer: Any, labels: Sequence[str], problems: list[str]) -> str | None:
    by_norm = {label.strip().lower(): label for label in labels}
    if isinstance(answer, str) and answer.strip().lower() in by_norm:
        return by_norm[answer.strip().lower()]  # canonical spelling, as scoring compares it
    problems.append(f"answer {answer!r} is not one of the labels: {', '.join(labels)}")
    return None


def _aliases(answer: Any, problems: list[str]) -> tuple[str, ...] | None:
    aliases = [answer] if isinstance(answer, str) else answer
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        problems.append("a short answer is a non-empty string or a list of them")
        return None
    return tuple(a.strip() for a in aliases)


def parse_item(row: Mapping[str, Any], task_type: str, labels: Sequence[str] = ()) -> PackItem:
    """One item from a row in the pack schema; raises PackError listing its problems."""
    if task_type not in TASK_TYPES:
        raise PackError(f"unknown task_type {task_type!r}; use one of {', '.join(TASK_TYPES)}")
    if task_type == "label" and not labels:
        raise PackError("a label item needs the task's labels")
    item, problems = _item_problems(dict(row), task_type, labels)
    if item is None:
        raise PackError("; ".join(problems), problems)
    return item


# -- loading ------------------------------------------------------------------


class _Errors:
    """Located problems, collected so that one run reports many."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, where: Path | str, message: str, line: int | None = None) -> None:
        self.messages.append(f"{where}:{line}: {message}" if line is not None else f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.messages)

    def report(self, root: Path) -> str:
        shown = self.messages[:MAX_ERRORS]
        more = len(self.messages) - len(shown)
        lines = [f"domain pack {root} has {len(self.messages)} error(s):", *shown]
        return "\n".join(lines + ([f"... and {more} more"] if more else []))


@dataclass(frozen=True)
class _Meta:
    name: str
    description: str
    task_type: str | None  # None when invalid: items are then checked only for shape
    metric: str
    labels: tuple[str, ...]
    prompts: dict[str, PromptTemplate]
    retrieval_passages: int
    title: str
    examples: tuple[str, ...]
    notes: str
    answer_tokens: int | None
    drafts: str


def _read_text(path: Path, errors: _Errors, blobs: dict[str, bytes], root: Path) -> str | None:
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.add(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None
    except OSError as exc:
        errors.add(path, f"cannot read: {exc.strerror or exc}")
        return None
    blobs[path.relative_to(root).as_posix()] = data
    return text


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """1-based line of every mapping key, as "a" and "a.b", so field errors can point at a line."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            lines[name] = key.start_mark.line + 1
            lines.update(_key_lines(value, name + "."))
    return lines


def _load_meta(path: Path, errors: _Errors, blobs: dict[str, bytes], root: Path) -> _Meta | None:
    if not path.is_file():
        errors.add(path, "missing: every pack needs a domain.yaml (name, task_type, metric, prompts)")
        return None
    text = _read_text(path, errors, blobs, root)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        errors.add(path, f"invalid YAML: {problem}", mark.line + 1 if mark is not None else None)
        return None
    if not isinstance(data, dict):
        errors.add(path, "expected a mapping of fields (name, description, task_type, ...)")
        return None

    def bad(key: str, message: str) -> None:
        errors.add(path, message, lines.get(key))

    def text_field(key: str) -> str:
        value = data.get(key)
        if key not in data:
            bad(key, f"missing field '{key}'")
        elif not isinstance(value, str) or (key == "name" and not value.strip()):
            bad(key, f"'{key}' must be a non-empty string" if key == "name" else f"'{key}' must be a string")
        return value.strip() if isinstance(value, str) else ""

    name, description = text_field("name"), text_field("description")
    task_type, metric = _task_and_metric(data, bad)
    labels = _meta_labels(data, task_type, bad)
    templates = {kind: _template(data, kind, bad) for kind in REQUIRED_PLACEHOLDERS}
    defaults = _default_templates(task_type, labels)
    loaded = {kind: t or defaults.get(kind) for kind, t in templates.items()}
    prompts = {kind: t for kind, t in loaded.items() if t is not None}
    return _Meta(name, description, task_type, metric, labels, prompts, _retrieval_passages(data, bad),
                 _title(data, bad), _examples(data, bad), _notes(data, bad), _answer_tokens(data, bad),
                 _drafts(data, bad))


NOTES = ("draft", "background")


def _notes(data: dict[str, Any], bad: _Report) -> str:
    """What of a draft the strong model reads: all of it (`draft`), or its background only,
    without the weak model's own answer (`background`)."""
    notes = data.get("notes", "draft")
    if notes not in NOTES:
        bad("notes", f"'notes' must be one of {', '.join(NOTES)}")
        return "draft"
    return notes


DRAFTS = ("always", "specialist")


def _drafts(data: dict[str, Any], bad: _Report) -> str:
    """`drafts: specialist`: the weak model drafts only where it is a specialist (see DomainPack.drafts)."""
    drafts = data.get("drafts", "always")
    if drafts not in DRAFTS:
        bad("drafts", f"'drafts' must be one of {', '.join(DRAFTS)}")
        return "always"
    return drafts


def _answer_tokens(data: dict[str, Any], bad: _Report) -> int | None:
    """`answer_tokens: N`: how long a final answer in this domain needs to be (16 to 4096 tokens)."""
    value = data.get("answer_tokens")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 4096:
        bad("answer_tokens", "'answer_tokens' must be a whole number of tokens from 16 to 4096")
        return None
    return value


def _title(data: dict[str, Any], bad: _Report) -> str:
    title = data.get("title", "")
    if not isinstance(title, str):
        bad("title", "'title' must be a string")
        return ""
    return title.strip()


def _examples(data: dict[str, Any], bad: _Report) -> tuple[str, ...]:
    """Example questions for the app's Ask tab: optional, a list of non-empty strings."""
    examples = data.get("examples", [])
    if not isinstance(examples, list) or not all(isinstance(e, str) and e.strip() for e in examples):
        bad("examples", "'examples' must be a list of non-empty question strings")
        return ()
    return tuple(e.strip() for e in examples)


def _retrieval_passages(data: dict[str, Any], bad: _Report) -> int:
    """`retrieval: true`, `retrieval: {passages: N}` or absent/false (0: the weak model drafts from memory)."""
    value = data.get("retrieval", False)
    if value is False or value is None:
        return 0
    if value is True:
        return DEFAULT_RETRIEVAL_PASSAGES
    passages = value.get("passages") if isinstance(value, dict) else None
    if not isinstance(passages, int) or isinstance(passages, bool) or not 1 <= passages <= 20:
        bad("retrieval", "'retrieval' must be true, false or {passages: N} with N from 1 to 20")
        return 0
    return passages


def _task_and_metric(data: dict[str, Any], bad: _Report) -> tuple[str | None, str]:
    task_type = data.get("task_type")
    if "task_type" not in data:
        bad("task_type", "missing field 'task_type'")
        task_type = None
    elif task_type not in TASK_TYPES:
        bad("task_type", f"unknown task_type {task_type!r}; use one of {', '.join(TASK_TYPES)}")
        task_type = None
    metric = data.get("metric")
    known = sorted({m for ms in METRICS.values() for m in ms})
    if "metric" not in data:
        bad("metric", "missing field 'metric'")
    elif metric not in known:
        bad("metric", f"unknown metric {metric!r}; use one of {', '.join(known)}")
    elif task_type is not None and metric not in METRICS[task_type]:
        bad("metric", f"metric {metric!r} is not valid for task_type {task_type}; use {' or '.join(METRICS[task_type])}")
    return task_type, metric if isinstance(metric, str) else ""


def _meta_labels(data: dict[str, Any], task_type: str | None, bad: _Report) -> tuple[str, ...]:
    labels = data.get("labels")
    if task_type != "label":
        return tuple(labels) if isinstance(labels, list) and all(isinstance(x, str) for x in labels) else ()
    if not labels:
        bad("labels", "a label task needs 'labels': a list of at least two label strings")
        return ()
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
        bad("labels", "'labels' must be a list of at least two non-empty strings")
        return ()
    if len({x.strip().lower() for x in labels}) != len(labels):
        bad("labels", "'labels' has duplicates")
        return ()
    return tuple(x.strip() for x in labels)


def _template(data: dict[str, Any], kind: str, bad: _Report) -> PromptTemplate | None:
    key = f"{kind}_prompt"
    value = data.get(key)
    if value is None:
        if kind in ("weak", "strong"):
            bad(key, f"missing field '{key}' (with 'system' and 'user')")
        return None
    if not isinstance(value, dict) or not all(isinstance(value.get(part), str) for part in ("system", "user")):
        bad(key, f"'{key}' needs 'system' and 'user' strings")
        return None
    missing = [f"{{{p}}}" for p in REQUIRED_PLACEHOLDERS[kind] if f"{{{p}}}" not in value["user"]]
    if missing:
        bad(f"{key}.user", f"'{key}.user' must contain {' and '.join(missing)}")
        return None
    return PromptTemplate(value["system"], value["user"])


def _default_templates(task_type: str | None, labels: Sequence[str]) -> dict[str, PromptTemplate]:
    """Direct and RAG prompts for packs that do not write their own."""
    ending = {
        "multiple_choice": "Reason briefly, then end with a line of the form 'Answer: <letter>'.",
        "label": f"Reason briefly, then end with a line of the form 'Answer: <label>', one of: {', '.join(labels)}.",
    }.get(task_type or "", "Give the short answer first, then at most two sentences of explanation.")
    system = f"Answer the question accurately. {ending}"
    return {
        "direct": PromptTemplate(system, "{question}"),
        "rag": PromptTemplate(system + " Use the context where it helps.", "Context:\n{context}\n\nQuestion: {question}"),
        "weak_retrieval": PromptTemplate(
            "Read the passages, copy the ones the question depends on, then write a short draft answer.",
            "Passages:\n{context}\n\nQuestion: {question}\n\nWrite:\nBackground: <the passages that answer the "
            "question, copied exactly>\nDraft answer: <your answer>",
        ),
    }


def _load_corpus(root: Path, errors: _Errors, blobs: dict[str, bytes]) -> tuple[Path, ...]:
    folder = root / "corpus"
    if not folder.is_dir():
        errors.add(folder, "missing: put the domain's .md or .txt documents in corpus/")
        return ()
    paths = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES):
        text = _read_text(path, errors, blobs, root)
        if text is not None and text.strip():
            paths.append(path)
    if not paths:
        errors.add(folder, "no corpus documents: need at least one non-empty .md or .txt file")
    return tuple(paths)


def _load_split(path: Path, meta: _Meta | None, errors: _Errors, blobs: dict[str, bytes], root: Path) -> tuple[PackItem, ...]:
    if not path.is_file():
        errors.add(path, "missing: one JSON object per line (id, question, answer, ...)")
        return ()
    text = _read_text(path, errors, blobs, root)
    if text is None:
        return ()
    task_type, labels = (meta.task_type, meta.labels) if meta else (None, ())
    if task_type == "label" and not labels:
        task_type = None  # the missing labels are reported once, not again for every answer
    items: list[PackItem] = []
    first_line: dict[str, int] = {}
    rows = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rows += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.add(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number)
            continue
        item, problems = _item_problems(row, task_type, labels)
        for problem in problems:
            errors.add(path, problem, number)
        item_id = row.get("id") if isinstance(row, dict) else None
        if isinstance(item_id, str) and item_id.strip():
            if item_id.strip() in first_line:
                errors.add(path, f"duplicate id {item_id!r} (first on line {first_line[item_id.strip()]})", number)
                continue
            first_line[item_id.strip()] = number
        if item is not None:
            items.append(item)
    if rows == 0:
        errors.add(path, "empty split: no items")
    return tuple(items)


def _digest(blobs: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(blobs):  # names are hashed too, so a renamed or added document counts
        for part in (name.encode("utf-8"), blobs[name]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def load_pack(path: str | Path) -> DomainPack:
    """Load and validate a pack directory; raises PackError listing the problems found."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise PackError(f"{root}: not a directory (a domain pack is a folder with domain.yaml)")
    errors = _Errors()
    blobs: dict[str, bytes] = {}
    meta = _load_meta(root / "domain.yaml", errors, blobs, root)
    corpus = _load_corpus(root, errors, blobs)
    train, test = (_load_split(root / f"{split}.jsonl", meta, errors, blobs, root) for split in SPLITS)
    if errors or meta is None or meta.task_type is None:
        raise PackError(errors.report(root), errors.messages)
    return DomainPack(
        name=meta.name, description=meta.description, task_type=meta.task_type, metric=meta.metric,
        labels=meta.labels, prompts=meta.prompts, corpus_paths=corpus, train=train, test=test, root=root,
        digest=_digest(blobs), retrieval_passages=meta.retrieval_passages, notes=meta.notes,
        answer_tokens=meta.answer_tokens, drafts=meta.drafts,
        title=meta.title or meta.name, examples=meta.examples,
    )
