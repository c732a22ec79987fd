"""Collaborative feedback as pure functions: task metrics, judge parsing,
draft influence, pair selection, human-vote pairs and the DPO file.

The paper's signal: a weak draft is good when the strong model's final answer
built on it beats what the strong model writes alone. For K drafts of one
question the influence of draft i is `score(final_i) - score(strong_alone)`;
the most and least helpful drafts form a preference pair for the weak model.

Nothing here loads a model or opens the database (except `write_dpo_jsonl`,
which writes the file it is asked to), so all of it is tested with literals.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from cowest_app.core import prompts
from cowest_app.core.export import _json_line  # the log export's JSONL dialect
from cowest_app.files import atomic_path
from cowest_app.models.base import Message
from cowest_app.core.store import PreferencePair

TaskType = Literal["multiple_choice", "short_answer", "label"]
TASK_TYPES: tuple[str, ...] = ("multiple_choice", "short_answer", "label")

# -- answer metrics -----------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"“", "”", "‘", "’", "«", "»", "–", "—", "…"}


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lower case, no punctuation or articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """Bag-of-tokens F1 after normalisation; two empty answers agree fully."""
    pred_tokens, ref_tokens = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def contains_answer(pred: str, ref: str) -> float:
    """1.0 when the normalised reference appears as a whole-token span of the prediction."""
    ref_norm = normalize_answer(ref)
    return float(bool(ref_norm) and f" {ref_norm} " in f" {normalize_answer(pred)} ")


def _letters(n: int) -> str:
    return string.ascii_uppercase[:n]




def _marker(words: str) -> re.Pattern[str]:
    # "Answer: B", "the answer is (b)", "**Answer:** D", "answer is option C".
    return re.compile(
        rf"\b(?:{words})\b\W{{0,4}}(?:is\W{{0,4}})?(?:option\s+)?(?:\(([a-z])\)|([a-z])(?![a-z0-9'’]))",
        re.IGNORECASE,
    )


# "answer" outranks "option"/"choice": in "The answer is B, not option C" the answer is B.
_MARKERS = (_marker("answer"), _marker("option|choice"))
# The whole reply is one letter: "B", "(B)", "B.", "**B**".
_BARE = re.compile(r"^\W*\(?([A-Za-z])\)?\W*$")
# Letters written as options: "(C)" anywhere, or "C." / "C)" / "C:" opening a line.
_OPTION_FORM = re.compile(r"\(([A-Z])\)|^[^\w\n]*([A-Z])[.):](?=\s|$)", re.MULTILINE)


def extract_choice(text: str, options: Sequence[str]) -> int | None:
    """0-based index of the option a reply picks, or None if it picks none or is ambiguous.

    Tried in order, first hit wins:
      1. the last answer marker ("Answer: B", "the answer is (b)"), then the
         last "option C"/"choice C"; an unbracketed lower-case letter must end
         the phrase, so "the answer is a bit unclear" is not option A;
      2. the whole reply is a letter ("B", "(B)", "b.");
      3. exactly one distinct letter written as an option: "(C)" anywhere or
         "C." opening a line ("B. Vitamin C ..."); "(A) is wrong, (B) is
         right" names two and falls through;
      4. exactly one option's text appears in the reply (an option contained
         in a longer mentioned option, "vitamin C" in "vitamin C and D", yields).
    Letters beyond the number of options never count.
    """
    letters = _letters(len(options))
    if not text or not letters:
        return None

    def index(letter: str) -> int | None:
        return letters.index(letter.upper()) if letter.upper() in letters else None

    for marker in _MARKERS:
        for match in reversed(list(marker.finditer(text))):
            bracketed, bare = match.groups()
            rest = text[match.end():]
            if bare is not None and bare.islower() and rest[:1].isspace() and rest.strip()[:1].isalpha():
                continue  # "the answer is a bit unclear" is prose, not option A
            found = index(bracketed or bare)
            if found is not None:
                return found
    bare = _BARE.match(text.strip())
    if bare and index(bare.group(1)) is not None:
        return index(bare.group(1))
    written = {index(a or b) for a, b in _OPTION_FORM.findall(text)} - {None}
    if len(written) == 1:
        return written.pop()
    return _unique_mention(text, options)


def _unique_mention(text: str, options: Sequence[str]) -> int | None:
    haystack = f" {normalize_answer(text)} "
    normalised = [normalize_answer(option) for option in options]
    mentioned = {option for option in normalised if option and f" {option} " in haystack}
    # An option inside a longer mentioned option is not a separate mention.
    mentioned = {o for o in mentioned if not any(o != other and f" {o} " in f" {other} " for other in mentioned)}
    return normalised.index(mentioned.pop()) if len(mentioned) == 1 else None


_LABEL_MARKER = re.compile(r"(?:answer|label|verdict|judgement|judgment|classification)\s*(?:is)?\s*[:\-]?\s*", re.IGNORECASE)


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a reply gives (as spelled in `labels`), or None.

    A label right after a marker ("Verdict: unacceptable") wins, the last
    marker first; otherwise the label mentioned earliest, since replies lead
    with their verdict. Labels match whole words, and a label inside a longer
    one at the same spot ("acceptable" in "unacceptable") does not count.
    """
    if not text or not labels:
        return None
    normalised = {label: normalize_answer(label) for label in labels}
    for match in reversed(list(_LABEL_MARKER.finditer(text))):
        head = f" {normalize_answer(text[match.end():])} "
        longest = sorted((lab for lab in labels if normalised[lab]), key=lambda lab: -len(normalised[lab]))
        for label in longest:
            if head.startswith(f" {normalised[label]} "):
                return label
    haystack = f" {normalize_answer(text)} "
    spans: list[tuple[int, int, str]] = []
    for label, norm in normalised.items():
        if norm:
            spans += [(m.start(), m.end(), label) for m in re.finditer(rf"(?<= ){re.escape(norm)}(?= )", haystack)]
    spans = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0] for o in spans)]
    return min(spans)[2] if spans else None


Reference = str | int | Sequence[str]


@dataclass(frozen=True)
class QuestionItem:
    question: str
    domain: str = ""  # the domain pack it belongs to, by name
    reference: Reference | None = None
    options: tuple[str, ...] | None = None  # multiple choice / labels; shown to the models
    interaction_ids: tuple[str, ...] = ()  # when the question came from the log



def _reference_choice(reference: Reference, options: Sequence[str]) -> int | None:
    if isinstance(reference, int) and not isinstance(reference, bool):
        return reference if 0 <= reference < len(options) else None
    if isinstance(reference, str):
        return extract_choice(reference, options)
    raise TypeError(f"a multiple-choice reference is an option index or text, got {reference!r}")


def score_with_reference(
    answer: str, reference: Reference, task_type: TaskType, options: Sequence[str] | None = None
) -> float:
    """The task metric in [0, 1].

    - multiple_choice: accuracy of `extract_choice` against the reference (an
      index, a letter or the option text).
    - label: accuracy of `extract_label`; `options` are the labels.
    - short_answer: 1.0 when the answer is, or contains, the reference span
      (strong models answer in sentences, and token F1 would punish a correct
      sentence for its length); otherwise token F1 for partial credit. Exact
      match needs no separate term: EM = 1 implies F1 = 1. A list of reference
      aliases scores the best alias.
    """
    if task_type == "multiple_choice":
        if not options:
            raise ValueError("multiple_choice scoring needs the options")
        want = _reference_choice(reference, options)
        got = extract_choice(answer, options)
        return float(want is not None and got == want)
    if task_type == "label":
        if not options:
            raise ValueError("label scoring needs the labels (options)")
        if not isinstance(reference, str):
            raise TypeError(f"a label reference is a string, got {reference!r}")
        want = extract_label(reference, options)
        return float(want is not None and extract_label(answer, options) == want)
    if task_type == "short_answer":
        aliases = [reference] if isinstance(reference, str) else list(reference)
        if not aliases or not all(isinstance(a, str) for a in aliases):
            raise TypeError(f"a short-answer reference is text or a list of texts, got {reference!r}")
        return max(max(contains_answer(answer, ref), token_f1(answer, ref)) for ref in aliases)
    raise ValueError(f"unknown task_type {task_type!r}; use one of {TASK_TYPES}")


# -- the strong model as judge ------------------------------------------------

JUDGE_RUBRIC = (
    "You are a strict grader. Rate the answer to the question on a scale from 1 to 10:\n"
    "10 = fully correct, complete and helpful; 7 = correct with minor gaps; "
    "4 = partly correct or misleading; 1 = wrong, off-topic or harmful.\n"
    "Judge correctness first, then helpfulness; ignore length and style. "
    "If a reference answer is given, an answer that contradicts it is wrong.\n"
    "Reply with exactly one line in the form: Score: N/10"
)

# [^\w-]: a minus sign must reach the number, so "Score: -3" is out of range, not 3.
_SCORE_MARKER = re.compile(r"\b(?:score|rating|grade)[^\w-]{0,4}(?:(?:is|of)\s+)?(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER_ONLY = re.compile(r"^\W*(-?\d+(?:\.\d+)?)\W*$")


def judge_messages(question: str, answer: str, reference: str | None = None) -> list[Message]:
    """The fixed rubric prompt for the strong judge; the reference is shown when known."""
    user = f"Question:\n{question.strip()}\n\n"
    if reference is not None:
        user += f"Reference answer:\n{str(reference).strip()}\n\n"
    user += f"Answer to grade:\n{answer.strip() or '(empty)'}\n\nScore:"
    return [{"role": "system", "content": JUDGE_RUBRIC}, {"role": "user", "content": user}]


def parse_judge_score(text: str, lo: float = 1, hi: float = 10) -> float | None:
    """A judge reply's score mapped to [0, 1] (lo -> 0, hi -> 1), or None.

    Looks for the last "Score: N" (optionally "/M"), else the last "N/M",
    else a reply that is only a number. An "N/M" with M != hi is rescaled to
    the rubric (4/5 -> 8/10). Values outside [lo, hi] are None, not clamped:
    they mean the judge ignored the rubric.
    """
    if not text or hi <= lo:
        return None
    found: tuple[str, str | None] | None = None
    for pattern in (_SCORE_MARKER, _FRACTION):
        matches = list(pattern.finditer(text))
        if matches:
            found = matches[-1].group(1), matches[-1].group(2)
            break
    if found is None:
        match = _NUMBER_ONLY.match(text)
        found = (match.group(1), None) if match else None
    if found is None:
        return None
    value = float(found[0])
    if found[1] is not None:
        scale = float(found[1])
        if scale <= 0:
            return None
        value = value * hi / scale
    if not lo <= value <= hi:
        return None
    return (value - lo) / (hi - lo)


# -- influence and pair selection ---------------------------------------------


def influences(final_scores: Sequence[float | None], strong_alone_score: float | None) -> list[float | None]:
    """Influence of draft i = score of the final built on it - score of the strong model alone.

    An unscored final (judge reply unparsable) has no influence; without a
    strong-alone score no draft has one.
    """
    if strong_alone_score is None:
        return [None] * len(final_scores)
    return [None if s is None else s - strong_alone_score for s in final_scores]


@dataclass(frozen=True)
class PairChoice:
    chosen: int
    rejected: int
    margin: float


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _same_text(a: str, b: str) -> bool:
    return _normalised(a) == _normalised(b)


def choose_pair(drafts: Sequence[str], influences: Sequence[float | None], min_margin: float) -> PairChoice | str:
    """The most and least helpful drafts, or why there is no pair (a short reason string).

    No pair when fewer than two drafts are scored, when every scored draft has
    the chosen draft's text, or when the margin is not above `min_margin` (so
    ties never make a pair). Among distinct drafts the lowest influence is rejected.
    """
    if len(drafts) != len(influences):
        raise ValueError(f"{len(drafts)} drafts but {len(influences)} influences")
    scored = [i for i, value in enumerate(influences) if value is not None]
    if len(scored) < 2:
        return f"only {len(scored)} of {len(drafts)} drafts could be scored"
    chosen = max(scored, key=lambda i: influences[i])  # first of the best on ties
    # The rejected draft must differ from the chosen one: identical drafts
    # whose finals scored differently only show the strong model's noise.
    others = [i for i in scored if not _same_text(drafts[i], drafts[chosen])]
    if not others:
        return "all scored drafts are the same text"
    rejected = min(others, key=lambda i: influences[i])
    margin = float(influences[chosen] - influences[rejected])
    if margin <= min_margin:
        return f"margin {margin:.3f} <= min_margin {min_margin:.3f}"
    return PairChoice(chosen, rejected, margin)


def choose_pairs(drafts: Sequence[str], influences: Sequence[float | None], min_margin: float,
                 limit: int = 1) -> list[PairChoice] | str:
    """Up to `limit` pairs of one question's drafts, or why there is none (choose_pair's reason).

    The first is choose_pair's (most against least helpful); the others are every further
    (better, worse) pair of distinct texts whose margin is above `min_margin`, largest
    margin first, each pair of texts once. With K drafts a question can give up to
    K(K-1)/2 pairs: a question whose drafts split into helpful and unhelpful ones (one
    brings up the fact, the others do not) then teaches DPO that split several times,
    where best-against-worst alone weighs it the same as a question of near-equal drafts.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    first = choose_pair(drafts, influences, min_margin)
    if isinstance(first, str):
        return first
    scored = [i for i, value in enumerate(influences) if value is not None]
    candidates = sorted(
        (PairChoice(i, j, float(influences[i] - influences[j])) for i in scored for j in scored
         if influences[i] - influences[j] > min_margin and not _same_text(drafts[i], drafts[j])),
        key=lambda c: -c.margin)  # sorted() is stable: equal margins keep draft order
    chosen, seen = [first], {_texts(drafts, first)}
    for candidate in candidates:
        if len(chosen) == limit:
            break
        if _texts(drafts, candidate) not in seen:
            chosen.append(candidate)
            seen.add(_texts(drafts, candidate))
    return chosen


def _texts(drafts: Sequence[str], choice: PairChoice) -> tuple[str, str]:
    return _normalised(drafts[choice.chosen]), _normalised(drafts[choice.rejected])


# -- human votes --------------------------------------------------------------


def draft_vote(rating: int | None, best: str | None) -> int:
    """What one user's feedback says about the weak draft: +1 good, -1 bad, 0 no signal.

    A thumb rates the final answer, which was built on the draft; `best`
    (from the compare view) says which answer the user liked most. A draft is
    good when the user liked the result and did not prefer the strong model
    alone; bad when they disliked it, or preferred the strong model alone.
    Contradicting signals give no vote:

        rating \\ best | none | weak/collab | strong
        +1            |  +1  |     +1      |   0
        -1            |  -1  |      0      |  -1
        none          |   0  |     +1      |  -1
    """
    helped = best in ("weak", "collab")
    if rating == 1:
        return 0 if best == "strong" else 1
    if rating == -1:
        return 0 if helped else -1
    return 1 if helped else -1 if best == "strong" else 0


def _latest(feedback: Sequence[Mapping[str, Any]], key: str) -> Any:
    # Feedback is append-only: a changed vote is a newer row, and it wins.
    values = [fb.get(key) for fb in feedback if fb.get(key) is not None]
    return values[-1] if values else None


def interaction_vote(feedback: Sequence[Mapping[str, Any]], asker_session: str | None) -> int:
    """The one vote an interaction gives its draft (see `draft_vote`), oldest feedback first.

    Only the session that asked may vote: in the UI nobody else holds the
    interaction id, so feedback from another session came through the API
    with an id taken from the public export, and could overturn honest votes.
    Within the asking session the latest rating and the latest choice win: a
    repeated vote adds nothing and a changed vote (a mis-click fixed) replaces
    the old one. Sessionless interactions (scripts, tests) take any feedback.
    """
    own = [fb for fb in feedback if asker_session is None or fb.get("session_id") == asker_session]
    return draft_vote(_latest(own, "rating"), _latest(own, "best"))


def human_pairs(records: Iterable[Mapping[str, Any]],
                draft_prompts: Mapping[str, Callable[[str], list[Message]]]) -> list[PreferencePair]:
    """Pairs from user votes: for one (domain, normalised question), the draft of
    every interaction voted good (see `draft_vote`) is chosen over the draft of
    every interaction voted bad. An interaction's vote is `interaction_vote`.

    `records` are dicts as `LogStore.iter_records` yields them (feedback nested,
    oldest first). `draft_prompts` renders each served domain pack's drafting
    prompt (the DPO prompt must be the one the draft was written under).
    Interactions that failed, have no draft, or whose domain is not served
    (no drafting prompt to train on) are skipped. Each (chosen,
    rejected) text pair appears once. Evaluator "human", confidence 1. The
    output is deterministic, so a caller that logs pairs on every run can skip
    those whose `interaction_ids` are already in the store.
    """
    groups: dict[tuple[str, str], dict[int, list[Mapping[str, Any]]]] = {}
    for record in records:
        draft = prompts.clean_generation(record.get("weak_draft") or "")
        if record.get("status") not in (None, "ok") or not draft or record.get("domain") not in draft_prompts:
            continue
        feedback = record.get("feedback") or []
        vote = interaction_vote(feedback, record.get("session_id"))
        if vote:
            key = (record["domain"], normalize_answer(record["question"]))
            groups.setdefault(key, {1: [], -1: []})[vote].append(record)

    pairs: list[PreferencePair] = []
    for (domain, _), votes in groups.items():
        seen: set[tuple[str, str]] = set()
        for good in votes[1]:
            for bad in votes[-1]:
                chosen = prompts.clean_generation(good["weak_draft"])
                rejected = prompts.clean_generation(bad["weak_draft"])
                if _same_text(chosen, rejected) or (chosen, rejected) in seen:
                    continue
                seen.add((chosen, rejected))
                pairs.append(_human_pair(domain, good, bad, chosen, rejected, draft_prompts[domain]))
    return pairs


def _human_pair(domain: str, good: Mapping[str, Any], bad: Mapping[str, Any], chosen: str, rejected: str,
                draft_prompt: Callable[[str], list[Message]]) -> PreferencePair:
    question = good["question"]
    return PreferencePair(
        domain=domain,
        question=question,
        prompt=draft_prompt(question),
        chosen=chosen,
        rejected=rejected,
        chosen_score=1.0,
        rejected_score=0.0,
        margin=1.0,
        evaluator="human",
        confidence=1.0,
        trainable=True,
        interaction_ids=(str(good["id"]), str(bad["id"])),
        # Each draft keeps its own model and adapter; the pair's columns name the chosen one's.
        details={"rejected_adapter_version": bad.get("adapter_version"), "rejected_weak_model": bad.get("weak_model")},
        weak_model=good.get("weak_model"),
        strong_model=good.get("strong_model"),
        adapter_version=good.get("adapter_version"),
    )


def prefer_human(pairs: Iterable[PreferencePair]) -> list[PreferencePair]:
    """Human ratings take precedence: drop automatic pairs for any (domain,
    normalised question) that has a human pair; order is kept."""
    pairs = list(pairs)
    human = {(p.domain, normalize_answer(p.question)) for p in pairs if p.evaluator == "human"}
    return [p for p in pairs if p.evaluator == "human" or (p.domain, normalize_answer(p.question)) not in human]


# -- the DPO training file ----------------------------------------------------


def dpo_record(pair: PreferencePair) -> dict[str, Any]:
    """TRL's conversational preference format for one pair."""
    return {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in pair.prompt],
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def write_dpo_jsonl(pairs: Iterable[PreferencePair], path: Path | str) -> tuple[Path, int, str]:
    """Write pairs as DPO JSONL, atomically; returns (path, pairs written, sha256 of the file).

    The hash lets a training run record exactly which data it saw.
    """
    out = Path(path)
    digest = hashlib.sha256()
    count = 0
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            for pair in pairs:
                line = _json_line(dpo_record(pair)).encode("utf-8")
                digest.update(line)
                fh.write(line)
                count += 1
    return out, count, digest.hexdigest()
