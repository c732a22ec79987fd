#!/usr/bin/env python3
"""Build the ethics pack's items: four-option multiple choice, written for CoWeSt.

Each item below lists its correct option first, then three wrong ones, so the
answers can be checked by reading this file. The options are then shuffled
with a fixed seed so the correct letters are spread over A-D, and a rerun
reproduces the committed train.jsonl and test.jsonl byte for byte:

    python packs/ethics/build_pack.py

domain.yaml, README.md and corpus/ are written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 20250702
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for cowest_app

from cowest_app.domains.pack_items import write_splits  # noqa: E402

PREFIX = "ethics"
R, Q = "recall", "reasoning"

# (id, kind, question, correct option, three wrong options)
TEST = [
    # everyday judgements
    ("extra-change", Q, "A cashier hands you 20 euros too much change by mistake. What is the right thing to do?", "point out the mistake and give the extra money back", ["keep it, since it was the cashier's mistake", "keep it and boast about it to friends", "give back only half of it"]),
    ("scratched-car", Q, "While parking, you scratch another car and nobody sees it happen. What is the right thing to do?", "leave a note with your contact details or find the owner", ["drive away quickly", "leave a note with a made-up name", "tell the owner another driver did it"]),
    ("private-diary", Q, "Which of these actions is morally wrong?", "reading your flatmate's private diary without permission", ["declining a party invitation politely", "cooking dinner for a neighbour", "borrowing a book from the library"]),
    ("colleague-credit", Q, "Which of these actions is morally wrong?", "presenting a colleague's idea to the boss as your own", ["praising a colleague's idea in a meeting", "asking a colleague for feedback", "taking a lunch break at the usual time"]),
    ("harmless-secret", Q, "A friend tells you a personal secret that harms no one and asks you to keep it. What should you do?", "keep it to yourself", ["post it online", "tell their colleagues", "use it to get favours from them"]),
    ("toxic-waste", Q, "An employee finds out that the company is illegally dumping toxic waste into a river. Which response is most ethically appropriate?", "report it through proper channels, such as a regulator", ["ignore it to avoid trouble", "demand money from the company to stay quiet", "dump more waste to hit targets"]),
    ("promise-vs-emergency", Q, "You promised to help a friend move house on Saturday, but that morning your child is rushed to hospital. What is most reasonable?", "go to the hospital and let your friend know as soon as you can", ["help your friend and leave your child alone", "go to the hospital and never tell your friend anything", "tell your friend it is their fault your child is ill"]),
    ("toddler-bath", Q, "Which of these is clearly wrong for a babysitter to do?", "leave a toddler alone in the bath to take a long phone call", ["read the toddler a bedtime story", "give the toddler a glass of water", "put the toddler to bed at the agreed time"]),
    ("exam-copying", Q, "During an exam, a friend whispers to ask if they can copy your answers. What is the right response?", "refuse", ["let them copy everything", "sell them the answers", "copy their answers in return"]),
    ("neighbour-dog", Q, "Which of these actions is morally wrong?", "feeding a neighbour's dog chocolate on purpose to make it ill", ["walking your own dog in the park", "filling the dog's water bowl when asked", "stroking a dog with the owner's permission"]),
    ("judge-recusal", Q, "A judge is assigned a case about her brother's company. What should she do?", "step aside and let another judge hear the case", ["hear the case and rule for her brother", "hear the case without telling anyone", "ask her brother how she should rule"]),
    ("declining-loan", Q, "Which of these is morally acceptable?", "declining to lend a friend money you need for your own rent", ["spreading a false rumour about a friend", "breaking a friend's phone on purpose", "stealing from a friend's wallet"]),
    # principles and concepts
    ("kant-means", R, "The idea that people must be treated as ends in themselves and never merely as means is most associated with:", "Immanuel Kant", ["John Stuart Mill", "Thomas Hobbes", "Niccolò Machiavelli"]),
    ("utilitarianism", R, "Utilitarianism judges an action mainly by:", "its consequences for overall well-being", ["whether it follows religious law", "the intentions of the agent alone", "whether it is legal"]),
    ("virtue-ethics", R, "Virtue ethics, which goes back to Aristotle, focuses mainly on:", "a person's character and virtues", ["maximising total pleasure", "following written rules exactly", "obeying whoever holds power"]),
    ("golden-rule", R, "The Golden Rule says:", "treat others as you would want to be treated", ["might makes right", "look after yourself first", "the ends always justify the means"]),
    ("informed-consent", R, "In medicine, informed consent means that a patient:", "agrees to a treatment after being told its risks, benefits and alternatives", ["signs a form without any explanation", "lets the doctor decide everything", "pays for the treatment in advance"]),
    ("four-principles", R, "The four principles of biomedical ethics are autonomy, beneficence, non-maleficence and:", "justice", ["profit", "obedience", "loyalty to the hospital"]),
    ("non-maleficence", R, "The principle of non-maleficence means:", "do no harm", ["do whatever the patient asks", "tell the truth at all times", "share resources equally"]),
    ("plagiarism", R, "Plagiarism is:", "presenting someone else's work or ideas as your own without credit", ["quoting a source with a reference", "working in a group with permission", "summarising your own earlier work with a citation"]),
]

TRAIN = [
    ("inspector-bribe", R, "A builder pays a safety inspector to overlook faults in a building. This is best described as:", "bribery", ["charity", "a fair negotiation", "a tip for good service"]),
    ("deontology", R, "Deontological ethics judges actions mainly by:", "whether they follow moral duties and rules", ["their results alone", "how popular they are", "how much money they make"]),
    ("harm-principle", R, "The harm principle, that power may be used over someone against their will only to prevent harm to others, is associated with:", "John Stuart Mill", ["Immanuel Kant", "Plato", "Friedrich Nietzsche"]),
    ("lost-phone", Q, "You find a phone left on a bus seat. What is the right thing to do?", "hand it to the driver or to lost property", ["keep it", "sell it online", "throw it out of the window"]),
    ("cv-lie", Q, "Which of these actions is morally wrong?", "claiming a university degree on your CV that you do not have", ["listing a real degree on your CV", "asking a former teacher for a reference", "applying for a job you are qualified for"]),
    ("medical-gossip", Q, "Which of these actions is morally wrong?", "posting a friend's medical diagnosis on social media without their permission", ["visiting a friend in hospital", "sending a get-well card", "asking a friend how they are feeling"]),
    ("autonomy", R, "In medical ethics, respecting autonomy means:", "respecting a competent patient's right to make decisions about their own care", ["letting the doctor overrule every choice", "treating every patient exactly the same", "hiding bad news from patients"]),
    ("fallen-neighbour", Q, "You see your elderly neighbour fall and lie unable to get up, and no one else is around. What should you do?", "call for help and stay with them", ["walk past, since it is not your business", "film it and post it online", "take their shopping and leave"]),
]


def build(out: Path = HERE) -> None:
    write_splits(out, TEST, TRAIN, SEED, PREFIX)


def main() -> None:
    build()
    print(f"wrote {len(TEST)} test and {len(TRAIN)} train items to {HERE}")


if __name__ == "__main__":
    main()
