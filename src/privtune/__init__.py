"""privtune: private post-training of language models with provable guarantees."""

__version__ = "0.1.0"
