#!/usr/bin/env python3
"""Build the Saltmarsh formulary pack from one structured fact table.

Saltmarsh General Hospital, its drugs, wards, codes and rules are invented, so
no pre-trained model can know them: the weak model can only learn them from
corpus/. Everything here is derived from the tables below and a fixed seed,
so a rerun reproduces the committed files byte for byte:

    python packs/saltmarsh-formulary/build_pack.py

Writes corpus/*.md (one fact per "- " line), facts.jsonl (id, doc, text of
every fact line), train.jsonl and test.jsonl (four-option multiple choice).
domain.yaml and README.md are written by hand. Standard library only.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SEED = 20250611
HERE = Path(__file__).resolve().parent
TEST_EVERY = 3  # one in three questions of every family goes to the test split
LETTERS = "ABCD"
H = "Saltmarsh General Hospital"

# -- the fact table: names ----------------------------------------------------

DRUG_NAMES = [
    "Velorazine", "Tambrexil", "Oscavurin", "Pellidrone", "Quorvatide", "Heskapram", "Lunofexine", "Drestamol",
    "Corvanthe", "Ibraxolin", "Famoquel", "Gendarix", "Nystrelon", "Rovaquine", "Sarpalide", "Ulvemide",
    "Brisantol", "Cedraxin", "Halvorin", "Mordaxil", "Plintoran", "Zephiride", "Orvastine", "Wexaprine",
    "Altrovane", "Jessamol", "Ombrelin", "Treskalin", "Yarrodine", "Kelpavir",
]
CLASSES = [
    "tidal-channel blocker", "reedline receptor agonist", "brackwater kinase inhibitor", "samphire peptide analogue",
    "shoreline gate modulator", "mudflat protease inhibitor", "heronsite antagonist", "dune-lipid binder",
]
CONDITIONS = [
    "Marsh fever", "Tidewater cough", "Pellam syndrome", "grey-reed dermatitis", "harbour migraine",
    "brackish gut syndrome", "lantern-eye", "Corran's palsy", "drift ague", "kelp lung", "shingle knee",
    "oyster-shell rash", "fogbank vertigo", "sandpiper tremor", "mudflat anaemia", "Varrow's nephritis",
    "Dunmere fatigue", "cobble-heart", "sea-pink fever", "Hollin's cramp", "saltwind wheeze", "estuary itch",
    "Greyhithe ulcer", "Morrow's neuralgia", "spindrift insomnia", "lugworm colic", "fenlight blindness",
    "Casterby joint swelling", "wrackline oedema", "Tollan's rigors",
]
ROUTES = ["oral", "intravenous", "subcutaneous", "inhaled", "intramuscular"]
STORAGE = ["fridge at 2 to 8 °C", "room temperature, below 25 °C", "locked controlled-drug cabinet", "light-proof cupboard"]
RESTRICTIONS = [
    "unrestricted; any prescriber", "pharmacist release only", "consultant approval required",
    "Saltmarsh Formulary Panel approval required",
]
EFFECTS = [
    "tidal bradycardia", "salt-wasting crisis", "Quell interval prolongation", "grey-tongue reaction",
    "Halden flush", "reedline sedation",
]
# ward: (location, specialty)
WARDS = {
    "Heron Ward": ("level 2, East Wing", "renal medicine"),
    "Kestrel Ward": ("level 3, East Wing", "respiratory medicine"),
    "Dunlin Ward": ("level 1, West Wing", "acute admissions"),
    "Samphire Ward": ("level 4, East Wing", "older people's care"),
    "Curlew Ward": ("level 2, West Wing", "surgical recovery"),
    "Lighthouse Unit": ("the ground floor, North Block", "infusion day cases"),
    "Breakwater ICU": ("level 1, North Block", "intensive care"),
    "Eelgrass Ward": ("level 3, West Wing", "children's medicine"),
}
PROTOCOL_CODES = [
    "Code Bittern", "Code Gannet", "Code Plover", "Code Avocet", "Code Teal",
    "Code Shelduck", "Code Godwit", "Code Redshank", "Code Whimbrel", "Code Sanderling",
]
LEAD_ROLES = [
    "on-call Dunlin registrar", "Breakwater ICU outreach nurse", "duty Kestrel consultant", "night site practitioner",
    "on-call Heron registrar", "duty Samphire sister", "Curlew surgical registrar", "Lighthouse infusion lead",
    "Eelgrass paediatric registrar", "duty medical consultant",
]
ESCALATION_TARGETS = ["Breakwater ICU outreach", "the duty medical consultant", "the night site practitioner"]
# The Saltmarsh Early Tide Score: four parameters scored 0-3, summed; bands (low, high, response).
SETS_PARTS = ["breathing", "pulse", "temperature", "alertness"]
SETS_BANDS = [
    (0, 2, "routine observations every 6 hours"),
    (3, 4, "review by the nurse in charge within 60 minutes"),
    (5, 6, "review by the ward registrar within 30 minutes"),
    (7, 12, "call Breakwater ICU outreach at once"),
]
# Pharmacy contacts by day and time (minutes since midnight); see oncall_contact().
CONTACTS = {
    "dispensary": "the main dispensary, extension 2210",
    "oncall": "the on-call pharmacist, bleep 4417",
    "weekend": "the weekend resident pharmacist, bleep 4420",
    "cd": "the controlled-drugs officer, bleep 4431",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


# -- the fact table: drawn values ---------------------------------------------


@dataclass
class Drug:
    name: str
    code: str
    drug_class: str
    indication: str
    route: str
    dose: float  # mg per administration
    interval: int  # hours
    max_daily: float  # mg per 24 hours
    renal_threshold: int  # eGFR, mL/min/1.73 m²
    renal_pct: int | None  # percent of the standard dose below the threshold; None: do not give
    loading: tuple[float, int] | None  # (mg/kg once, cap in mg)
    partner: str = ""
    effect: str = ""
    ward: str = ""
    storage: str = ""
    restriction: str = ""

    @property
    def slug(self) -> str:
        return self.name.lower()

    @property
    def per_day(self) -> int:
        return 24 // self.interval

    @property
    def daily(self) -> float:
        return self.dose * self.per_day


@dataclass
class Protocol:
    code: str
    drug: Drug  # the first-line drug for the condition that triggers the code
    lead: str
    bleep: int
    first_minutes: int
    review_minutes: int
    obs_minutes: int
    escalate_minutes: int
    escalate_to: str

    @property
    def slug(self) -> str:
        return self.code.split()[1].lower()

    @property
    def trigger(self) -> str:
        return f"suspected {self.drug.indication}"


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _nice(x: float) -> bool:
    return float(x * 2).is_integer()  # whole or half milligrams only: doses a ward can give


def build_drugs(rng: random.Random) -> list[Drug]:
    codes = rng.sample(range(101, 990), len(DRUG_NAMES))
    conditions = rng.sample(CONDITIONS, len(DRUG_NAMES))
    drugs = []
    for i, name in enumerate(DRUG_NAMES):
        dose = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150, 200, 250, 300, 400, 500])
        interval = rng.choice([4, 6, 8, 12, 12, 24])
        daily = dose * (24 // interval)
        factors = [f for f in (1.25, 1.5, 2, 2.5) if (daily * f) % 5 == 0] or [2]
        pcts = [p for p in (25, 50, 75) if _nice(dose * p / 100)]
        renal_pct = None if rng.random() < 0.2 else rng.choice(pcts)
        loading = None
        if i % 2 == 0:  # half the formulary has a weight-based loading dose
            per_kg = rng.choice([0.5, 1, 1.5, 2, 2.5, 3, 4, 5])
            loading = (per_kg, int(round(per_kg * rng.choice([60, 70, 80, 90]) / 10.0) * 10) or 10)
        drugs.append(Drug(
            name=name, code=f"SGH-F-{codes[i]}", drug_class=rng.choice(CLASSES), indication=conditions[i],
            route=rng.choice(ROUTES), dose=dose, interval=interval, max_daily=daily * rng.choice(factors),
            renal_threshold=rng.choice([15, 20, 25, 30, 35, 40, 45, 50, 60]), renal_pct=renal_pct, loading=loading,
            ward=rng.choice(list(WARDS)), storage=rng.choice(STORAGE), restriction=rng.choice(RESTRICTIONS),
        ))
    order = rng.sample(drugs, len(drugs))  # interaction partners: disjoint pairs
    for a, b in zip(order[::2], order[1::2]):
        a.partner, b.partner = b.name, a.name
        a.effect = b.effect = rng.choice(EFFECTS)
    return drugs


def build_protocols(rng: random.Random, drugs: list[Drug]) -> list[Protocol]:
    bleeps = rng.sample(range(5100, 5999), len(PROTOCOL_CODES))
    chosen = rng.sample(drugs, len(PROTOCOL_CODES))
    return [
        Protocol(
            code=code, drug=chosen[i], lead=LEAD_ROLES[i], bleep=bleeps[i],
            first_minutes=rng.choice([10, 15, 20, 30, 40, 45, 60, 90]),
            review_minutes=rng.choice([60, 90, 120, 180, 240]), obs_minutes=rng.choice([10, 15, 20, 30, 45, 60]),
            escalate_minutes=rng.choice([120, 150, 180, 240, 300, 360]), escalate_to=rng.choice(ESCALATION_TARGETS),
        )
        for i, code in enumerate(PROTOCOL_CODES)
    ]


# -- facts: each is one line of the corpus ------------------------------------


@dataclass
class Fact:
    id: str
    doc: str
    text: str


def renal_text(d: Drug) -> str:
    action = f"give {d.renal_pct}% of the standard dose at the usual interval" if d.renal_pct else f"do not give {d.name}"
    return f"{d.name} renal rule: if eGFR is below {d.renal_threshold} mL/min/1.73 m², {action}."


def drug_facts(d: Drug, doc: str) -> list[Fact]:
    lines = {
        "code": f"{d.name} formulary code: {d.code}.",
        "class": f"{d.name} belongs to the {d.drug_class} class.",
        "indication": f"{d.name} is the Saltmarsh first-line treatment for {d.indication}.",
        "route": f"{d.name} is given by the {d.route} route.",
        "dose": f"{d.name} standard adult dose: {num(d.dose)} mg every {d.interval} hours.",
        "max": f"{d.name} maximum daily dose: {num(d.max_daily)} mg in 24 hours.",
        "renal": renal_text(d),
        "interaction": f"{d.name} must not be co-prescribed with {d.partner}: risk of {d.effect}.",
        "ward": f"{d.name} is held as ward stock on {d.ward}.",
        "storage": f"{d.name} storage: {d.storage}.",
        "restriction": f"{d.name} prescribing: {d.restriction}.",
    }
    if d.loading:
        lines["loading"] = f"{d.name} loading dose: {num(d.loading[0])} mg/kg once, capped at {d.loading[1]} mg."
    return [Fact(f"{d.slug}.{key}", doc, text) for key, text in lines.items()]


def protocol_facts(p: Protocol, doc: str) -> list[Fact]:
    lines = {
        "trigger": f"{p.code} is called for {p.trigger}.",
        "lead": f"{p.code} is led by the {p.lead}.",
        "bleep": f"{p.code} lead bleep: {p.bleep}.",
        "first": f"Under {p.code}, give the first dose of {p.drug.name} within {p.first_minutes} minutes of the call.",
        "review": f"Under {p.code}, a senior review must happen within {p.review_minutes} minutes of the call.",
        "obs": f"Under {p.code}, observations are repeated every {p.obs_minutes} minutes.",
        "escalate": f"Under {p.code}, if the patient has not improved {p.escalate_minutes} minutes after the call, escalate to {p.escalate_to}.",
    }
    return [Fact(f"{p.slug}.{key}", doc, text) for key, text in lines.items()]


def ward_facts(doc: str) -> list[Fact]:
    facts = []
    for ward, (where, specialty) in WARDS.items():
        slug = ward.lower().replace(" ", "-")
        facts.append(Fact(f"{slug}.location", doc, f"{ward} is on {where}."))
        facts.append(Fact(f"{slug}.specialty", doc, f"{ward} is the {specialty} ward."))
    return facts


def sets_facts(doc: str) -> list[Fact]:
    facts = [Fact("sets.parts", doc, "The Saltmarsh Early Tide Score (SETS) adds four parameters, each scored 0 to 3: "
                                     "breathing, pulse, temperature and alertness.")]
    for low, high, response in SETS_BANDS:
        span = f"{low} or more" if high == 12 else f"{low} to {high}"
        facts.append(Fact(f"sets.band-{low}", doc, f"SETS {span}: {response}."))
    return facts


def oncall_facts(doc: str) -> list[Fact]:
    texts = {
        "dispensary": f"Pharmacy queries Monday to Friday, 08:00 to 17:00, go to {CONTACTS['dispensary']}.",
        "oncall": f"Pharmacy queries Monday to Friday from 17:00 to 08:00 the next morning go to {CONTACTS['oncall']}.",
        "weekend": f"Pharmacy queries from Saturday 08:00 to Monday 08:00 go to {CONTACTS['weekend']}.",
        "cd": f"Controlled-drug queries at any hour go to {CONTACTS['cd']}.",
    }
    return [Fact(f"oncall.{key}", doc, text) for key, text in texts.items()]


def oncall_contact(day: int, minute: int) -> str:
    """Who takes a general pharmacy query: day 0 = Monday, minute since midnight."""
    if day == 6 or (day == 5 and minute >= 8 * 60) or (day == 0 and minute < 8 * 60):
        return "weekend"
    if day <= 4 and 8 * 60 <= minute < 17 * 60:
        return "dispensary"
    return "oncall"


# -- questions ----------------------------------------------------------------

# A Spec's options are built after the split, once its answer position is
# known: numeric options are shown in ascending order, so the distractors are
# chosen to put the correct value at the drawn position.
Build = Callable[[int, random.Random], tuple[list[str], int]]


@dataclass
class Spec:
    id: str
    family: str
    kind: str
    question: str
    fact_ids: list[str]
    build: Build


def clock(minutes: int) -> str:
    minutes %= 24 * 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _step(value: float) -> float:
    """A nice step below value / 6: wrong numbers near the right one, never below zero in three steps."""
    for step in (100, 50, 25, 20, 10, 5, 2, 1, 0.5):
        if step <= value / 6:
            return step
    return 0.5


def numeric(correct: float, near: list[float], fmt: Callable[[float], str], step: float | None = None,
            low: float = 0) -> Build:
    """Sorted numeric options: plausible mistakes (`near`) first, then steps from the answer."""
    step = step or _step(correct)

    def build(pos: int, rng: random.Random) -> tuple[list[str], int]:
        plausible = [v for v in dict.fromkeys(near) if _nice(v)]  # no 18.75 mg among whole numbers
        below = [v for v in plausible if low < v < correct]
        above = [v for v in plausible if v > correct]
        rng.shuffle(below)
        rng.shuffle(above)
        below, above = below[:pos], above[: 3 - pos]
        k = 1
        while len(below) < pos and correct - k * step > low:
            if correct - k * step not in below:
                below.append(correct - k * step)
            k += 1
        k = 1
        while len(below) + len(above) < 3:  # too close to zero for `pos` smaller numbers: fill above
            if correct + k * step not in above:
                above.append(correct + k * step)
            k += 1
        values = sorted(below + above + [correct])
        return [fmt(v) for v in values], values.index(correct)

    return build


def choice(correct: str, pool: list[str]) -> Build:
    """Text options: three distractors from the pool around the answer at the drawn position."""
    others = [o for o in dict.fromkeys(pool) if o != correct]

    def build(pos: int, rng: random.Random) -> tuple[list[str], int]:
        picked = rng.sample(others, 3)
        return picked[:pos] + [correct] + picked[pos:], pos

    return build


def fixed(correct: str, distractors: list[str]) -> Build:
    """Text options from exactly three given distractors."""
    assert len(distractors) == 3 and correct not in distractors, (correct, distractors)
    return choice(correct, distractors)


def mg(x: float) -> str:
    return f"{num(x)} mg"


def drug_recall(d: Drug, drugs: list[Drug], rng: random.Random) -> list[Spec]:
    names = [x.name for x in drugs]
    # A 2x2 grid of dose x interval: every option shares one part with two others, so the
    # right one cannot be spotted as the option most like the rest.
    dose2 = rng.choice([x for x in (d.dose / 2, d.dose * 2, d.dose * 1.5) if _nice(x)])
    interval2 = rng.choice([h for h in (4, 6, 8, 12, 24) if h != d.interval])
    grid = [f"{num(x)} mg every {h} hours" for x in (d.dose, dose2) for h in (d.interval, interval2)]
    near_max = [d.daily, d.max_daily * 0.75, d.max_daily * 1.5, d.max_daily * 2, d.max_daily - _step(d.max_daily)]
    specs = [
        Spec(f"code-{d.slug}", "code", "recall", f"What is the {H} formulary code for {d.name}?", [f"{d.slug}.code"],
             choice(d.code, [x.code for x in drugs])),
        Spec(f"code-reverse-{d.slug}", "code-reverse", "recall",
             f"Which drug has the formulary code {d.code} at {H}?", [f"{d.slug}.code"], choice(d.name, names)),
        Spec(f"class-{d.slug}", "class", "recall",
             f"In the {H} formulary, which drug class does {d.name} belong to?", [f"{d.slug}.class"],
             choice(d.drug_class, CLASSES)),
        Spec(f"indication-{d.slug}", "indication", "recall",
             f"What is {d.name} the Saltmarsh first-line treatment for?", [f"{d.slug}.indication"],
             choice(d.indication, [x.indication for x in drugs])),
        Spec(f"indication-reverse-{d.slug}", "indication-reverse", "recall",
             f"Which drug is the Saltmarsh first-line treatment for {d.indication}?", [f"{d.slug}.indication"],
             choice(d.name, names)),
        Spec(f"dose-{d.slug}", "dose", "recall", f"What is the standard adult dose of {d.name} at {H}?",
             [f"{d.slug}.dose"], fixed(grid[0], grid[1:])),
        Spec(f"max-{d.slug}", "max", "recall", f"What is the maximum daily dose of {d.name} in the Saltmarsh formulary?",
             [f"{d.slug}.max"], numeric(d.max_daily, near_max, lambda v: f"{num(v)} mg in 24 hours")),
        Spec(f"renal-threshold-{d.slug}", "renal-threshold", "recall",
             f"Below which eGFR (mL/min/1.73 m²) does the Saltmarsh renal rule for {d.name} apply?", [f"{d.slug}.renal"],
             numeric(d.renal_threshold, [15, 20, 25, 30, 35, 40, 45, 50, 60, 70], num, 5)),
        Spec(f"partner-{d.slug}", "partner", "recall",
             f"Under Saltmarsh rules, which drug must not be co-prescribed with {d.name}?", [f"{d.slug}.interaction"],
             choice(d.partner, [n for n in names if n != d.name])),
        Spec(f"ward-{d.slug}", "ward", "recall", f"On which Saltmarsh ward is {d.name} held as ward stock?",
             [f"{d.slug}.ward"], choice(d.ward, list(WARDS))),
    ]
    extra = [
        Spec(f"route-{d.slug}", "route", "recall", f"By which route is {d.name} given at {H}?", [f"{d.slug}.route"],
             choice(d.route, ROUTES)),
        Spec(f"storage-{d.slug}", "storage", "recall", f"How must {d.name} be stored at {H}?", [f"{d.slug}.storage"],
             choice(d.storage, STORAGE)),
        Spec(f"restriction-{d.slug}", "restriction", "recall", f"What prescribing restriction applies to {d.name} at {H}?",
             [f"{d.slug}.restriction"], choice(d.restriction, RESTRICTIONS)),
        Spec(f"effect-{d.slug}", "effect", "recall",
             f"What is the listed risk of giving {d.name} together with {d.partner}?", [f"{d.slug}.interaction"],
             choice(d.effect, EFFECTS)),
    ]
    specs += rng.sample(extra, 2)  # every fact is in the corpus; two of these four are asked per drug
    if d.loading:
        per_kg = d.loading[0]
        specs.append(Spec(f"loading-{d.slug}", "loading", "recall",
                          f"What is the weight-based loading dose of {d.name} in the Saltmarsh formulary?",
                          [f"{d.slug}.loading"],
                          numeric(per_kg, [0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6], lambda v: f"{num(v)} mg/kg once", 0.5)))
    return specs


def drug_reasoning(d: Drug, drugs: list[Drug], rng: random.Random) -> list[Spec]:
    specs: list[Spec] = []
    for days in rng.sample([2, 3, 4, 5, 7, 10], 2):
        total = d.daily * days
        near = [d.dose * days, d.dose * (d.per_day + 1) * days, d.daily * (days - 1), d.daily * (days + 1),
                d.max_daily * days]
        specs.append(Spec(
            f"total-{d.slug}-{days}d", "total", "reasoning",
            f"A patient receives {d.name} at the Saltmarsh standard adult dose for {days} full days. "
            f"How much {d.name} is given in total?",
            [f"{d.slug}.dose"], numeric(total, [v for v in near if v != total], mg)))
    intervals = [h for h in (4, 6, 8, 12, 24) if h != d.interval and _nice(d.max_daily / (24 // h))]
    if intervals:
        h = rng.choice(intervals)
        largest = d.max_daily / (24 // h)
        near = [d.dose, d.daily / (24 // h), d.max_daily / (24 // d.interval), d.max_daily / max(24 // h - 1, 1)]
        specs.append(Spec(
            f"largest-{d.slug}-{h}h", "largest", "reasoning",
            f"{d.name} is to be given every {h} hours. What is the largest single dose that stays within "
            f"the Saltmarsh maximum daily dose?",
            [f"{d.slug}.max"], numeric(largest, [v for v in near if v != largest and _nice(v)], mg)))
    specs += _exceed_specs(d, rng)
    specs += _renal_specs(d, rng)
    specs += _interaction_specs(d, drugs, rng)
    if d.loading:
        per_kg, cap = d.loading
        weights = [w for w in range(44, 131, 2) if per_kg * w != cap]
        capped = [w for w in weights if per_kg * w > cap]
        picks = rng.sample([w for w in weights if per_kg * w < cap], 2) + rng.sample(capped or weights, 1)
        for w in picks:
            dose = min(per_kg * w, cap)
            near = [per_kg * w, cap, (per_kg + 0.5) * w, max(per_kg - 0.5, 0.5) * w, per_kg * (w + 10)]
            specs.append(Spec(
                f"loading-{d.slug}-{w}kg", "loading-weight", "reasoning",
                f"What loading dose of {d.name} does the Saltmarsh formulary give a {w} kg adult?",
                [f"{d.slug}.loading"], numeric(dose, [v for v in near if v != dose], mg)))
    return specs


def _exceed_specs(d: Drug, rng: random.Random) -> list[Spec]:
    specs = []
    for over in (True, False):
        proposals = []
        for h in (4, 6, 8, 12):
            for x in range(5, int(d.max_daily) + 1, 5):
                total = x * (24 // h)
                if (total > d.max_daily) == over and total != d.max_daily and total != d.daily and total <= 2 * d.max_daily:
                    proposals.append((x, h, total))
        if not proposals:
            continue
        x, h, total = rng.choice(proposals)
        within = "Within the maximum daily dose"
        over_by = lambda n: f"Over the maximum daily dose by {num(n)} mg"  # noqa: E731
        # Wrong excesses: against a misremembered maximum (the standard daily amount, or a step off).
        wrong = [total - m for m in (d.daily, d.max_daily - _step(d.max_daily), d.max_daily + _step(d.max_daily),
                                     d.max_daily * 0.75, d.max_daily / 2) if total - m > 0]
        wrong += [total - d.max_daily + k * _step(d.max_daily) for k in (1, 2, 3)]  # ..and arithmetic slips
        wrong += [k * _step(d.max_daily) for k in (1, 2, 3, 4)]
        if over:
            excess = total - d.max_daily
            pool = [over_by(n) for n in dict.fromkeys(wrong) if n != excess]
            build = fixed(over_by(excess), [within] + rng.sample(pool, 2))
        else:
            pool = [over_by(n) for n in dict.fromkeys(wrong) if n > 0]
            build = fixed(within, rng.sample(pool, 3))
        specs.append(Spec(
            f"exceed-{d.slug}-{num(x)}mg-{h}h", "exceed", "reasoning",
            f"A prescriber writes {d.name} {num(x)} mg every {h} hours. How does this compare with the "
            f"Saltmarsh maximum daily dose?",
            [f"{d.slug}.max"], build))
    return specs


def _renal_specs(d: Drug, rng: random.Random) -> list[Spec]:
    t = d.renal_threshold
    reduced = {p: f"{num(d.dose * p / 100)} mg every {d.interval} hours" for p in (25, 50, 75) if _nice(d.dose * p / 100)}
    standard = f"{num(d.dose)} mg every {d.interval} hours"
    stop = f"Do not give {d.name}"
    pool = [standard, stop] + list(reduced.values())
    pool.append(f"{num(d.dose)} mg every {d.interval * 2} hours")  # interval stretching: another rule, not this one
    if _nice(d.dose * 1.5):
        pool.append(f"{num(d.dose * 1.5)} mg every {d.interval} hours")
    specs = []
    for egfr in (t - rng.randint(3, min(12, t - 5)), t + rng.randint(3, 20)):
        if egfr < t:
            correct = reduced[d.renal_pct] if d.renal_pct else stop
        else:
            correct = standard
        specs.append(Spec(
            f"renal-{d.slug}-{egfr}", "renal", "reasoning",
            f"A patient with an eGFR of {egfr} mL/min/1.73 m² needs {d.name}. What does the Saltmarsh formulary "
            f"say to give?",
            [f"{d.slug}.dose", f"{d.slug}.renal"], choice(correct, pool)))
    return specs


def _interaction_specs(d: Drug, drugs: list[Drug], rng: random.Random) -> list[Spec]:
    others = [x.name for x in drugs if x.name not in (d.name, d.partner)]
    first, second, third = rng.sample(others, 3)
    # One question always offers the partner; the other does so 40% of the time, else "neither" is right.
    pairs = [(d.partner, first), (d.partner, second) if rng.random() < 0.4 else (second, third)]
    specs = []
    for x, y in pairs:
        if rng.random() < 0.5:
            x, y = y, x
        correct = f"{d.partner} only" if d.partner in (x, y) else "Neither of them"
        options = [f"{x} only", f"{y} only", f"Both {x} and {y}", "Neither of them"]
        specs.append(Spec(
            f"interaction-{d.slug}-{x.lower()}-{y.lower()}", "interaction", "reasoning",
            f"A patient already takes {d.name}. The team is choosing between {x} and {y}. Which choice would break "
            f"a Saltmarsh co-prescribing rule?",
            [f"{d.slug}.interaction"], fixed(correct, [o for o in options if o != correct])))
    return specs


def protocol_questions(p: Protocol, protocols: list[Protocol], drugs: list[Drug], rng: random.Random) -> list[Spec]:
    s = p.slug
    specs = [
        Spec(f"trigger-{s}", "trigger", "recall", f"At {H}, what is {p.code} called for?", [f"{s}.trigger"],
             choice(p.trigger, [q.trigger for q in protocols])),
        Spec(f"trigger-reverse-{s}", "trigger-reverse", "recall", f"Which Saltmarsh code is called for {p.trigger}?",
             [f"{s}.trigger"], choice(p.code, PROTOCOL_CODES)),
        Spec(f"lead-{s}", "lead", "recall", f"Who leads {p.code} at {H}?", [f"{s}.lead"], choice(p.lead, LEAD_ROLES)),
        Spec(f"bleep-{s}", "bleep", "recall", f"Which bleep reaches the lead for {p.code}?", [f"{s}.bleep"],
             choice(str(p.bleep), [str(q.bleep) for q in protocols])),
        Spec(f"first-drug-{s}", "first-drug", "recall", f"Which drug is given first under {p.code}?", [f"{s}.first"],
             choice(p.drug.name, [x.name for x in drugs])),
        Spec(f"first-minutes-{s}", "first-minutes", "recall",
             f"Under {p.code}, within how many minutes of the call must the first dose of {p.drug.name} be given?",
             [f"{s}.first"], numeric(p.first_minutes, [10, 15, 20, 30, 40, 45, 60, 90, 120], lambda v: f"{num(v)} minutes", 5)),
        Spec(f"review-minutes-{s}", "review-minutes", "recall",
             f"Under {p.code}, within how many minutes of the call must a senior review happen?", [f"{s}.review"],
             numeric(p.review_minutes, [30, 45, 60, 90, 120, 180, 240, 300], lambda v: f"{num(v)} minutes", 15)),
        Spec(f"obs-{s}", "obs", "recall", f"How often are observations repeated under {p.code}?", [f"{s}.obs"],
             numeric(p.obs_minutes, [5, 10, 15, 20, 30, 45, 60, 90], lambda v: f"every {num(v)} minutes", 5)),
        Spec(f"escalate-to-{s}", "escalate-to", "recall",
             f"Under {p.code}, to whom is a patient escalated who has not improved in time?", [f"{s}.escalate"],
             choice(p.escalate_to, ESCALATION_TARGETS + ["the Saltmarsh Formulary Panel"])),
    ]
    starts = rng.sample(range(0, 24 * 60, 5), 4)

    def times(start: int, correct: int, near: list[int]) -> Build:
        return numeric(correct, near, lambda v: clock(start + int(v)), 5)

    for start in starts[:2]:
        m = p.first_minutes
        near = [m - 5, m - 10, m + 5, m + 10, m + 15, m + 30, p.review_minutes, 60 + m]
        specs.append(Spec(
            f"first-deadline-{s}-{clock(start).replace(':', '')}", "first-deadline", "reasoning",
            f"{p.code} is called at {clock(start)}. By what time must the first dose of {p.drug.name} have been given?",
            [f"{s}.first"], times(start, m, [v for v in near if v != m])))
    r, e, o = p.review_minutes, p.escalate_minutes, p.obs_minutes
    specs.append(Spec(
        f"review-deadline-{s}-{clock(starts[2]).replace(':', '')}", "review-deadline", "reasoning",
        f"{p.code} is called at {clock(starts[2])}. By what time must the senior review have happened?",
        [f"{s}.review"], times(starts[2], r, [v for v in (r - 30, r - 15, r + 15, r + 30, r + 60, p.first_minutes) if v != r])))
    specs.append(Spec(
        f"escalate-time-{s}-{clock(starts[3]).replace(':', '')}", "escalate-time", "reasoning",
        f"{p.code} is called at {clock(starts[3])} and the patient has not improved. At what time does the protocol "
        f"require escalation to {p.escalate_to}?",
        [f"{s}.escalate"], times(starts[3], e, [v for v in (e - 60, e - 30, e + 30, e + 60, r) if v != e and v > 0])))
    for k in rng.sample([3, 4, 5, 6], 2):
        start = rng.randrange(0, 24 * 60, 5)
        ordinal = {3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}[k]
        due = (k - 1) * o
        near = [k * o, (k - 2) * o, (k - 1) * (o + 5), (k - 1) * max(o - 5, 5), (k + 1) * o]
        specs.append(Spec(
            f"obs-time-{s}-{k}", "obs-time", "reasoning",
            f"Under {p.code}, the first set of observations is taken at {clock(start)}. When is the {ordinal} set due?",
            [f"{s}.obs"], times(start, due, [v for v in near if v != due])))
    return specs


def ward_questions() -> list[Spec]:
    specs = []
    for ward, (where, specialty) in WARDS.items():
        slug = ward.lower().replace(" ", "-")
        specs.append(Spec(f"ward-location-{slug}", "ward-location", "recall", f"Where is {ward} at {H}?",
                          [f"{slug}.location"], choice(where, [w for w, _ in WARDS.values()])))
        specs.append(Spec(f"ward-specialty-{slug}", "ward-specialty", "recall",
                          f"Which Saltmarsh ward is the {specialty} ward?", [f"{slug}.specialty"], choice(ward, list(WARDS))))
    return specs


def sets_band(total: int) -> str:
    return next(response for low, high, response in SETS_BANDS if low <= total <= high)


def sets_questions(rng: random.Random, count: int) -> list[Spec]:
    responses = [r for _, _, r in SETS_BANDS]
    specs, seen = [], set()
    while len(specs) < count:
        scores = tuple(rng.randint(0, 3) for _ in SETS_PARTS)
        if scores in seen:
            continue
        seen.add(scores)
        ward = rng.choice(list(WARDS))
        parts = ", ".join(f"{part} {score}" for part, score in zip(SETS_PARTS, scores))
        correct = sets_band(sum(scores))
        specs.append(Spec(
            f"sets-{''.join(map(str, scores))}", "sets", "reasoning",
            f"On {ward} a patient's Saltmarsh Early Tide Score parts are: {parts}. What response does the SETS "
            f"table require?",
            ["sets.parts"] + [f"sets.band-{low}" for low, high, _ in SETS_BANDS if low <= sum(scores) <= high],
            fixed(correct, [r for r in responses if r != correct])))
    specs.append(Spec("sets-code-threshold", "sets-recall", "recall",
                      "From what Saltmarsh Early Tide Score upwards must Breakwater ICU outreach be called at once?", ["sets.band-7"],
                      numeric(7, [4, 5, 6, 8, 9, 10], num, 1)))
    return specs


def oncall_questions(rng: random.Random, count: int) -> list[Spec]:
    specs, seen = [], set()
    while len(specs) < count:
        day, minute = rng.randrange(7), rng.randrange(0, 24 * 60, 10)
        if minute in (8 * 60, 17 * 60) or (day, minute) in seen:
            continue  # exactly at a handover the rule reads both ways
        seen.add((day, minute))
        key = oncall_contact(day, minute)
        specs.append(Spec(
            f"oncall-{DAYS[day].lower()}-{clock(minute).replace(':', '')}", "oncall", "reasoning",
            f"At {H}, a nurse has a general (not controlled-drug) pharmacy query at {clock(minute)} on a "
            f"{DAYS[day]}. Whom should the query go to?",
            [f"oncall.{key}"], fixed(CONTACTS[key], [c for k, c in CONTACTS.items() if k != key])))
    specs.append(Spec("oncall-cd", "oncall-recall", "recall",
                      f"Which bleep takes controlled-drug queries at {H}?", ["oncall.cd"],
                      choice("4431", ["4417", "4420", "2210", "4413", "4437"])))
    return specs


# -- writing ------------------------------------------------------------------

DOCS = {
    "formulary-a-g.md": "Formulary, part 1: drugs A to G",
    "formulary-h-o.md": "Formulary, part 2: drugs H to O",
    "formulary-p-z.md": "Formulary, part 3: drugs P to Z",
    "protocols.md": "Emergency codes and protocols",
    "wards-escalation-on-call.md": "Wards, SETS escalation and pharmacy on-call",
}


def formulary_doc(initial: str) -> str:
    return next(doc for doc in DOCS if doc.startswith("formulary") and doc[10] <= initial.lower() <= doc[12])


def write_corpus(drugs: list[Drug], protocols: list[Protocol]) -> list[Fact]:
    sections: dict[str, list[tuple[str, list[Fact]]]] = {doc: [] for doc in DOCS}
    for d in sorted(drugs, key=lambda x: x.name):
        doc = formulary_doc(d.name[0])
        sections[doc].append((f"{d.name} ({d.code})", drug_facts(d, doc)))
    for p in protocols:
        sections["protocols.md"].append((f"{p.code}: {p.trigger}", protocol_facts(p, "protocols.md")))
    doc = "wards-escalation-on-call.md"
    sections[doc] += [("Wards", ward_facts(doc)), ("Saltmarsh Early Tide Score", sets_facts(doc)),
                      ("Pharmacy on-call", oncall_facts(doc))]
    folder = HERE / "corpus"
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.md"):
        stale.unlink()
    facts = []
    for doc, title in DOCS.items():
        lines = [f"# {H}: {title}", "",
                 "Internal document of the Saltmarsh General Hospital pharmacy and medicines committee. "
                 "Applies to adult inpatients unless a line says otherwise.", ""]
        for heading, section in sections[doc]:
            lines += [f"## {heading}", ""] + [f"- {f.text}" for f in section] + [""]
            facts += section
        (folder / doc).write_text("\n".join(lines), encoding="utf-8")
    return facts


def all_specs(rng: random.Random, drugs: list[Drug], protocols: list[Protocol]) -> list[Spec]:
    specs = []
    for d in drugs:
        specs += drug_recall(d, drugs, rng) + drug_reasoning(d, drugs, rng)
    for p in protocols:
        specs += protocol_questions(p, protocols, drugs, rng)
    specs += ward_questions() + sets_questions(rng, 24) + oncall_questions(rng, 24)
    return specs


def split_specs(specs: list[Spec], rng: random.Random) -> tuple[list[Spec], list[Spec]]:
    """Every family (question template) contributes one in TEST_EVERY questions to test."""
    by_family: dict[str, list[Spec]] = {}
    for spec in specs:
        by_family.setdefault(spec.family, []).append(spec)
    train, test = [], []
    for family in sorted(by_family):
        group = by_family[family]
        rng.shuffle(group)
        offset = rng.randrange(TEST_EVERY)
        for i, spec in enumerate(group):
            (test if i % TEST_EVERY == offset else train).append(spec)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def render(specs: list[Spec], rng: random.Random) -> list[dict]:
    """Items with balanced answer letters: positions are a shuffled round robin."""
    positions = [i % len(LETTERS) for i in range(len(specs))]
    rng.shuffle(positions)
    rows = []
    for spec, pos in zip(specs, positions):
        options, answer = spec.build(pos, rng)
        assert len(options) == 4 and len(set(options)) == 4, (spec.id, options)
        rows.append({"id": spec.id, "question": spec.question, "options": options, "answer": LETTERS[answer],
                     "kind": spec.kind, "fact_ids": spec.fact_ids})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    drugs = build_drugs(rng)
    protocols = build_protocols(rng, drugs)
    facts = write_corpus(drugs, protocols)
    specs = all_specs(rng, drugs, protocols)
    ids = [s.id for s in specs]
    questions = [re.sub(r"\s+", " ", s.question.lower()) for s in specs]
    assert len(set(ids)) == len(ids) and len(set(questions)) == len(questions), "duplicate questions"
    known = {f.id for f in facts}
    assert all(f in known for s in specs for f in s.fact_ids), "a question cites a fact not in the corpus"
    train, test = split_specs(specs, rng)
    write_jsonl(HERE / "facts.jsonl", [{"id": f.id, "doc": f.doc, "text": f.text} for f in facts])
    write_jsonl(HERE / "train.jsonl", render(train, rng))
    write_jsonl(HERE / "test.jsonl", render(test, rng))
    print(f"{len(facts)} facts, {len(train)} train and {len(test)} test questions")


if __name__ == "__main__":
    main()
