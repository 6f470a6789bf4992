"""Training internals: runtime (devices, precision, processes), losses, metrics, the ablation set."""
