"""The Training tab explains itself: what a pair is, how far the next run is, when it is."""

from __future__ import annotations

from cowest_app.serving.training_view import NO_CURVE, PHASE_WORDS, job_state_md, pair_counts_md


def test_pair_counts_say_how_far_the_next_run_is():
    counts = {"human": {"total": 3, "trainable": 2}, "reference": {"total": 0, "trainable": 0}}
    text = pair_counts_md(counts, waiting=2, needed=32)
    assert text.startswith("**2 of 32** new trainable pairs needed for the next run.")
    assert "| human | 3 | 2 |" in text and "Ratings become pairs when a run starts" in text
    assert "enough" in pair_counts_md(counts, waiting=40, needed=32)
    assert "training run" in NO_CURVE


def test_the_state_line_says_what_idle_means():
    assert job_state_md({"phase": "idle"}) == f"**State:** {PHASE_WORDS['idle']}"

