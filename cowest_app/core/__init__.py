"""The core both the app and `training/` import: prompts, the collaboration loop, scoring, evaluators, preference pairs and the log."""
