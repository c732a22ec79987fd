"""The learning loop: collaborative feedback, the scheduled DPO job, the adapter registry and its admin control."""
