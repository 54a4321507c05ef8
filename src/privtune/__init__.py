"""privtune: private post-training of language models with provable guarantees."""

__version__ = "0.1.0"


def train(cfg, *, resume: bool = False, callback=None) -> dict:
    """Train (or resume) the run `cfg` describes (`privtune.methods.load_config(path, overrides)`); returns the eval dict.
    The library never prints: pass `callback` to receive progress events."""
    from .run.loop import train as _train  # lazy: `import privtune` stays light (no torch) for the CLI's --help

    return _train(cfg, resume=resume, callback=callback)
