"""Serve the `qin-train` flow as deployment `qin-train/local` (needs PREFECT_API_URL; see `make serve`)."""

from flows.qin_train import qin_train

if __name__ == "__main__":
    qin_train.serve(name="local")
