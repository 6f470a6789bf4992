"""Orchestration (Prefect) and tracking (MLflow) around the `qin` library.

Telemetry is off for every tool, also when a flow is started without the Makefile (STACK.md).
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

# Prefect's persisted task results are the cross-process cache: keep them inside the project (set before
# prefect is imported). The ephemeral server needs more than its default 20 s to start on 2 busy cores.
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.path.abspath(".prefect/results"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# The library logs per-epoch progress on the "qin" logger; route it through Prefect's handlers.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "qin")
logging.getLogger("qin").setLevel(logging.INFO)
