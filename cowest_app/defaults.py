"""Defaults of the learning loop, each in one place.

Used by the app's config (COWEST_FEEDBACK_MIN_MARGIN), feedback collection
(`cowest_app.loop.collect`), the training job, `training.pipeline` and the
benchmarks. Standard library only, so `cowest_app.config` can import it.
"""

from __future__ import annotations

# The weak model samples its K drafts: they must differ to be compared.
DRAFT_TEMPERATURE = 0.8
# The smallest influence gap between chosen and rejected draft that makes a
# preference pair; a smaller gap is noise, not preference. The shipped pack's
# results were produced with it.
MIN_MARGIN = 0.05
