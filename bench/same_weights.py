"""Does a code change leave training bitwise as it was? Train one model with a checkout's own code and dump
its weights and its valid predictions; then compare two dumps (base against head).

    python bench/same_weights.py dump --repo BASE_CHECKOUT --out base.npz
    python bench/same_weights.py dump --repo . --out head.npz
    python bench/same_weights.py compare base.npz head.npz

`dump` runs `qin data synth` (the tiny preset), validate, embed, featurize, train (the cpu preset, fp32,
2 threads, 2 epochs) and scores the valid split with the package, all with the checkout's code (its own
`python -m qin`, PYTHONPATH set to it), in a temporary folder; it needs only the `qin` CLI and
`qin.serving.inference.load_package` / `qin.featurize.Features`, which every version since the model packages
has.
`compare` checks the weights tensor by tensor (in state_dict order, under the names the head's package
loader maps old names to) with `torch.equal`, and the predictions byte for byte.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PARAMS = """
data: {preset: tiny}
train:
  preset: cpu
  epochs: 2
  precision: fp32
  threads: 2
  compile: false
"""

DUMP = """
import sys, numpy as np, torch
from qin.featurize import Features
from qin.serving.inference import load_package
package, features, out = sys.argv[1:4]
weights = torch.load(f"{package}/weights.pt", map_location="cpu", weights_only=True)
valid = {k: np.asarray(v) for k, v in Features(features).split("valid").items()}
probs = load_package(package).predict(valid)
arrays = {f"w{i}": v.numpy() for i, v in enumerate(weights.values())}
np.savez(out, probs=probs, names=np.array(list(weights)), **arrays)
"""


def dump(repo: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = work / "params.yaml"
        base = (repo / "params.yaml").read_text()
        params.write_text(_merged(base, PARAMS))

        def qin(*args: str) -> None:
            cmd = [sys.executable, "-m", "qin", "--params", str(params), *args]
            subprocess.run(cmd, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)

        qin("data", "synth", "--out", str(work / "data"), "--no-dvc")
        qin("validate", "--data", str(work / "data"), "--out", str(work / "validate"))
        qin(
            "embed",
            "--data",
            str(work / "data"),
            "--validation",
            str(work / "validate"),
            "--out",
            str(work / "embed"),
        )
        qin("featurize", "--data", str(work / "data"), "--validation", str(work / "validate"),
            "--embedding", str(work / "embed"), "--out", str(work / "features"))  # fmt: skip
        qin(
            "train",
            "--features",
            str(work / "features"),
            "--out",
            str(work / "model"),
            "--metrics",
            str(work / "m.json"),
        )
        code = [sys.executable, "-c", DUMP, str(work / "model"), str(work / "features"), str(out.resolve())]
        subprocess.run(code, cwd=repo, env=env, check=True)
    print(f"{out}: dumped the weights and valid predictions of {repo}")


def _merged(base: str, extra: str) -> str:
    import yaml

    merged = yaml.safe_load(base) or {}
    for section, values in yaml.safe_load(extra).items():
        merged.setdefault(section, {}).update(values)
    return yaml.safe_dump(merged, sort_keys=False)


def compare(a: Path, b: Path) -> int:
    import numpy as np

    from qin.serving.inference import legacy_name

    x, y = np.load(a), np.load(b)
    names_x = [legacy_name(str(n)) for n in x["names"]]
    names_y = [str(n) for n in y["names"]]
    problems = [] if names_x == names_y else [f"names differ: {names_x} vs {names_y}"]
    for i, name in enumerate(names_y):
        if i < len(names_x) and not (
            x[f"w{i}"].dtype == y[f"w{i}"].dtype and np.array_equal(x[f"w{i}"], y[f"w{i}"])
        ):
            problems.append(f"{name}: not equal")
    same_probs = x["probs"].tobytes() == y["probs"].tobytes()
    print(f"{len(names_y)} weight tensors, {len(names_y) - len(problems)} equal; valid predictions "
          f"({len(y['probs'])} rows) byte-equal: {same_probs}")  # fmt: skip
    for p in problems:
        print("  " + p)
    return 0 if not problems and same_probs else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--repo", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args()
    if args.command == "dump":
        dump(args.repo.resolve(), args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
