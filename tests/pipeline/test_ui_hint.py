"""The MLflow link `make run` prints says how to open it when nothing serves the UI there."""

import socket
from pathlib import Path

from flows.tracking import ui_hint
from qin.settings.sections import RegisterConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_local_store_without_a_ui_says_make_ui(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    closed = RegisterConfig(tracking_uri=store, ui_url=f"http://127.0.0.1:{_free_port()}")
    hint = ui_hint(closed)
    assert hint is not None and "`make ui`" in hint and closed.ui_url in hint
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert ui_hint(RegisterConfig(tracking_uri=store, ui_url=f"http://127.0.0.1:{port}")) is None


def test_a_tracking_server_needs_no_hint() -> None:
    assert ui_hint(RegisterConfig(tracking_uri="http://127.0.0.1:1", ui_url="http://127.0.0.1:1")) is None
