"""Orchestration (Prefect) and tracking (MLflow) around the `qin` library.

Telemetry is off for every tool, also when a flow is started without the Makefile. OFFLINE_ENV is the one
list of those settings: Python code imports it (qinstack, tests, bench); the Makefile, docker/compose.yaml,
docker/Dockerfile and bench/gpu_check.sh write it out, checked against it by tests/code/test_offline_env.py.
Standard library only: `python -m qinstack secrets` runs with a bare Python.
"""

import logging
import os

OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",  # MLflow honours only the literal "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# The ephemeral server needs more than its default 20 s to start on 2 busy cores (set before prefect is
# imported). Stage outputs are cached by the store (qin/runs/store.py), not by Prefect's persisted results.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# The library logs per-epoch progress on the "qin" logger; route it through Prefect's handlers.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "qin")
logging.getLogger("qin").setLevel(logging.INFO)
