#!/usr/bin/env python3
"""Build the counterfactual pack's items: four-option multiple choice, written for CoWeSt.

Each item below lists its correct option first, then three wrong ones, so the
answers can be checked by reading this file. The options are then shuffled
with a fixed seed so the correct letters are spread over A-D, and a rerun
reproduces the committed train.jsonl and test.jsonl byte for byte:

    python packs/counterfactual/build_pack.py

domain.yaml, README.md and corpus/ are written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 20250703
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for cowest_app

from cowest_app.domains.pack_items import write_splits  # noqa: E402

PREFIX = "counterfactual"
R, Q = "recall", "reasoning"

# (id, kind, question, correct option, three wrong options)
# Every answer follows from the question's premise, whatever the real world says.
TEST = [
    ("boil-at-50", Q, "If water boiled at 50 °C at sea level, what would a pot of water heated to 60 °C at sea level be doing?", "boiling", ["freezing", "staying still and lukewarm, far from boiling", "turning into ice on top"]),
    ("freeze-at-10", Q, "If water froze at 10 °C instead of 0 °C, what would a glass of water left outside at 5 °C for a day become?", "ice", ["boiling water", "steam", "liquid water that never freezes"]),
    ("48-hour-day", Q, "If one day on Earth lasted 48 hours instead of 24, about how long would an average night last?", "about 24 hours", ["about 12 hours", "about 48 hours", "about 6 hours"]),
    ("half-gravity-mass", Q, "If Earth's gravity were half as strong, what would the mass of a 70 kg person be?", "70 kg", ["35 kg", "140 kg", "0 kg"]),
    ("no-moon", Q, "If Earth had no moon, which of these could never happen?", "a lunar eclipse", ["a sunrise", "rain", "winter"]),
    ("no-tilt", Q, "If Earth's axis had no tilt at all, which of these would largely disappear?", "the seasons", ["day and night", "gravity", "the Sun's light"]),
    ("dense-ice", Q, "If ice were denser than liquid water, what would happen to ice forming on the surface of a lake?", "it would sink", ["it would float higher than it does now", "it would turn into steam", "it would stay at the surface"]),
    ("slow-light", Q, "If light travelled at only 100 metres per second, how long would it take light to cross a field 1 kilometre wide?", "10 seconds", ["1 second", "100 seconds", "0.1 seconds"]),
    ("fast-sound", Q, "If sound travelled at 1,000 metres per second in air, how long after a lightning flash 3 kilometres away would you hear the thunder?", "3 seconds", ["9 seconds", "30 seconds", "0.3 seconds"]),
    ("400-day-year", Q, "If a year had 400 days of 24 hours each, how many hours would a year have?", "9,600", ["8,760", "4,000", "12,000"]),
    ("sun-vanishes", Q, "If the Sun suddenly vanished, roughly how long would sunlight already on its way keep reaching Earth?", "about 8 minutes", ["no time at all", "about 8 days", "about 8 years"]),
    ("half-year", Q, "If Earth went round the Sun in half the time it actually takes, about how long would a year last?", "about 6 months", ["about 2 years", "about 12 months", "about 3 months"]),
    ("olympics-every-2", Q, "If the Summer Olympics were held every 2 years instead of every 4, starting with 2024, when would the next Summer Games after 2024 be?", "2026", ["2028", "2025", "2032"]),
    ("pi-is-3", Q, "If pi were exactly 3, what would be the circumference of a circle 10 metres across?", "30 metres", ["31.4 metres", "13 metres", "300 metres"]),
    ("co2-no-heat", Q, "If carbon dioxide and the other greenhouse gases trapped no heat, Earth's average surface temperature would be:", "lower than it is", ["higher than it is", "exactly the same", "above the boiling point of water"]),
    ("moon-twice-as-far", Q, "If the Moon were twice as far from Earth as it is, how would it look in the sky?", "smaller", ["larger", "exactly the same size", "square"]),
    ("no-atmosphere-sky", Q, "If Earth had no atmosphere, what colour would the daytime sky look away from the Sun?", "black", ["blue", "green", "white"]),
    ("marathon-40", Q, "If a marathon were exactly 40 km long, how long would a runner holding a steady 10 km per hour take?", "4 hours", ["3 hours", "5 hours", "40 minutes"]),
    ("speed-limit-120", Q, "If a motorway speed limit were raised to 120 km per hour, how long would a 240 km trip take driving at exactly the limit all the way?", "2 hours", ["2.4 hours", "3 hours", "1.5 hours"]),
    ("sun-rises-west", Q, "If the Earth spun the other way so that the Sun rose in the west, in which direction would it set?", "east", ["west", "north", "south"]),
]

TRAIN = [
    ("six-fingers", Q, "If every human hand had six fingers, how many fingers would a person have on both hands?", "12", ["10", "6", "24"]),
    ("30-day-months", Q, "If every month had exactly 30 days, how many days would a 12-month year have?", "360", ["365", "366", "300"]),
    ("boil-at-120", Q, "If water boiled at 120 °C at sea level, what would water at 110 °C at sea level be?", "liquid, not yet boiling", ["boiling", "ice", "all turned to steam"]),
    ("ten-day-week", Q, "If a week had 10 days, how many days would 3 weeks have?", "30", ["21", "13", "33"]),
    ("twelve-hours-sleep", Q, "If every person needed 12 hours of sleep a day, how many waking hours would a 24-hour day leave?", "12", ["16", "8", "18"]),
    ("metals-insulate", Q, "If metals did not conduct electricity, which of these would stop working?", "copper electrical wiring", ["a wooden chair", "a paper book", "a glass of water"]),
    ("half-gravity-weight", Q, "If Earth's gravity were half as strong, what would happen to a person's weight on a bathroom scale?", "it would be halved", ["it would double", "it would stay the same", "it would become zero"]),
    ("plants-no-oxygen", Q, "If plants stopped photosynthesising, which gas would they stop releasing into the air?", "oxygen", ["nitrogen", "helium", "neon"]),
]


def build(out: Path = HERE) -> None:
    write_splits(out, TEST, TRAIN, SEED, PREFIX)


def main() -> None:
    build()
    print(f"wrote {len(TEST)} test and {len(TRAIN)} train items to {HERE}")


if __name__ == "__main__":
    main()
