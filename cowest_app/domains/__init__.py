"""Domain packs: their prompts, items, corpora and retrieval."""
