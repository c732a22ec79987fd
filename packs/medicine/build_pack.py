#!/usr/bin/env python3
"""Build the medicine pack's items: four-option multiple choice, written for CoWeSt.

Each item below lists its correct option first, then three wrong ones, so the
answers can be checked by reading this file. The options are then shuffled
with a fixed seed so the correct letters are spread over A-D, and a rerun
reproduces the committed train.jsonl and test.jsonl byte for byte:

    python packs/medicine/build_pack.py

domain.yaml, README.md and corpus/ are written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 20250701
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for cowest_app

from cowest_app.domains.pack_items import write_splits  # noqa: E402

PREFIX = "medicine"
R, Q = "recall", "reasoning"

# (id, kind, question, correct option, three wrong options)
TEST = [
    # vitamins and minerals
    ("scurvy", R, "A deficiency of which vitamin causes scurvy?", "vitamin C", ["vitamin D", "vitamin B12", "vitamin K"]),
    ("rickets", R, "Rickets in children is most often caused by a deficiency of which vitamin?", "vitamin D", ["vitamin C", "vitamin A", "vitamin B1 (thiamine)"]),
    ("night-blindness", R, "Night blindness is an early sign of a deficiency of which vitamin?", "vitamin A", ["vitamin C", "vitamin E", "vitamin B3 (niacin)"]),
    ("wernicke", R, "Wernicke encephalopathy in people with heavy alcohol use is caused by a lack of which vitamin?", "thiamine (vitamin B1)", ["vitamin C", "vitamin D", "vitamin K"]),
    ("newborn-vitamin-k", R, "Newborn babies are routinely given which vitamin to prevent a bleeding disorder?", "vitamin K", ["vitamin A", "vitamin C", "vitamin B12"]),
    ("neural-tube", R, "Taking which supplement before conception and in early pregnancy lowers the risk of neural tube defects such as spina bifida?", "folic acid", ["vitamin K", "iodine", "vitamin C"]),
    ("iron-deficiency-cells", R, "In iron-deficiency anaemia, the red blood cells are typically:", "small and pale (microcytic, hypochromic)", ["large (macrocytic)", "sickle-shaped", "normal in size and colour"]),
    ("vitamin-d-adults", R, "In adults, long-standing vitamin D deficiency causes softening of the bones called:", "osteomalacia", ["osteoarthritis", "gout", "osteomyelitis"]),
    ("vegan-b12", Q, "A strict vegan who has taken no supplements for years has tiredness, an anaemia with large red cells and tingling in the feet. Which deficiency is most likely?", "vitamin B12", ["iron", "vitamin C", "vitamin K"]),
    # emergencies
    ("anaphylaxis", Q, "Minutes after a bee sting, a man has a swollen lip, wheeze and low blood pressure. What is the first-line treatment?", "intramuscular adrenaline (epinephrine)", ["an oral antihistamine tablet", "a salbutamol inhaler alone", "an oral course of antibiotics"]),
    ("hypoglycaemia", Q, "A person with diabetes is shaky and sweaty with a blood glucose of 2.8 mmol/L but is awake and can swallow. What should be given first?", "a fast-acting sugar by mouth, such as glucose tablets or a sugary drink", ["an extra dose of insulin", "a dose of metformin", "nothing until the next meal"]),
    ("paracetamol-overdose", R, "What is the antidote for a paracetamol (acetaminophen) overdose?", "acetylcysteine", ["naloxone", "flumazenil", "vitamin K"]),
    ("heart-attack-aspirin", Q, "An adult with no aspirin allergy has crushing central chest pain suggesting a heart attack while an ambulance is on its way. Which medicine is usually given to chew?", "aspirin", ["ibuprofen", "paracetamol", "an antacid"]),
    ("child-dehydration", Q, "A toddler with diarrhoea is mildly dehydrated but drinking. What is the first-line treatment?", "oral rehydration solution", ["loperamide", "stopping all fluids for a day", "a course of antibiotics"]),
    # medicines
    ("type-2-first-line", R, "Which medicine is the usual first-line drug treatment for type 2 diabetes?", "metformin", ["insulin glargine", "prednisolone", "warfarin"]),
    ("warfarin-inr", R, "Which blood test is used to monitor warfarin treatment?", "INR (international normalised ratio)", ["HbA1c", "TSH", "troponin"]),
    ("penicillin-allergy", Q, "A patient had anaphylaxis to penicillin in the past. Which of these antibiotics must be avoided?", "amoxicillin", ["clarithromycin", "doxycycline", "vancomycin"]),
    ("nsaid-side-effect", R, "Which is a well-known serious side effect of NSAIDs such as ibuprofen?", "stomach ulcers and bleeding", ["hair loss", "improved kidney function", "night blindness"]),
    ("ace-inhibitor-cough", R, "Which side effect is typical of ACE inhibitors such as ramipril?", "a persistent dry cough", ["orange-red urine", "yellow-tinted vision", "overgrowth of the gums"]),
    ("coeliac-diet", Q, "A person with coeliac disease must avoid gluten. Which food must they avoid?", "ordinary wheat bread", ["plain rice", "boiled potatoes", "fresh fruit"]),
]

TRAIN = [
    ("anaemia-commonest", R, "Worldwide, a lack of which mineral is the commonest cause of anaemia?", "iron", ["zinc", "calcium", "magnesium"]),
    ("pellagra", R, "Pellagra (dermatitis, diarrhoea and dementia) is caused by a deficiency of which vitamin?", "niacin (vitamin B3)", ["vitamin C", "vitamin A", "vitamin K"]),
    ("iodine-goitre", R, "A lack of iodine in the diet classically causes:", "goitre (an enlarged thyroid)", ["rickets", "scurvy", "night blindness"]),
    ("opioid-antidote", R, "Which drug reverses an opioid overdose?", "naloxone", ["acetylcysteine", "atropine", "adrenaline"]),
    ("type-1-treatment", R, "People with type 1 diabetes need which treatment for life?", "insulin", ["metformin", "a low-salt diet alone", "antibiotics"]),
    ("aspirin-children", R, "Aspirin is avoided in children and teenagers under 16 because of the risk of:", "Reye's syndrome", ["scurvy", "rickets", "gout"]),
    ("resting-heart-rate", R, "What is the usual normal resting heart rate of an adult?", "60 to 100 beats per minute", ["20 to 40 beats per minute", "120 to 160 beats per minute", "180 to 220 beats per minute"]),
    ("cpr-rate", R, "During adult CPR, chest compressions should be given at what rate?", "100 to 120 per minute", ["30 to 40 per minute", "60 to 70 per minute", "180 to 200 per minute"]),
]


def build(out: Path = HERE) -> None:
    write_splits(out, TEST, TRAIN, SEED, PREFIX)


def main() -> None:
    build()
    print(f"wrote {len(TEST)} test and {len(TRAIN)} train items to {HERE}")


if __name__ == "__main__":
    main()
