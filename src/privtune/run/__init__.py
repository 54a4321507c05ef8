"""A training run and its run directory.

setup (config → task, model, engine, pool), rundir (the run directory: the one owner of its file names), keystore
(the secret key and private state, kept out of the run dir), ledger (privacy.json), loop (`train`), evaluate, replay,
forget. The package itself imports nothing, so importing one of its modules never drags in the others.
"""
