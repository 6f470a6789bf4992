"""Settings: params.yaml read into typed, frozen models (params.py), section by section (sections.py)."""
