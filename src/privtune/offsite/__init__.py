"""Offsite-tuning (Xiao, Lin & Han 2023) and GradOT (Yao et al. 2025, arXiv 2507.04455).

The model owner builds an emulator (emulator.py: uniform drop or GradOT's gradient-preserving compression, gcs.py),
the data owner trains the adapter blocks on it (tune.py), the owner plugs them into the full model (plug.py).
"""
