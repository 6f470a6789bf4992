"""The data: its contract (schema.py), the feature table (features.py), the gate's checks (checks.py), the
synthetic generator (synth.py) and the importers of real files and interaction logs."""
