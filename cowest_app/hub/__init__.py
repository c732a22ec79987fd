"""The Hugging Face Hub: adapter pushes and the mirrored feedback log."""
