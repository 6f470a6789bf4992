"""`qin` command line: one subcommand per stage, each a small main() around a pure stage function.

Heavy imports (torch, great_expectations, MLflow through the registry plug-in) happen inside the
subcommand that needs them, so `qin --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from qin.data import schema
from qin.runs import layout, pipeline
from qin.settings.params import Params, load_params
from qin.settings.sections import PresetName, replace


def _synth(args: argparse.Namespace, params: Params) -> None:
    from qin.data.synth import synthesize

    cfg = replace(
        params.data,
        preset=args.preset or params.data.preset,
        seed=params.data.seed if args.seed is None else args.seed,
    )
    s = synthesize(args.out, cfg, workers=args.workers)
    print(
        f"wrote {args.out}/: preset {cfg.preset}, seed {cfg.seed}; train positive rate "
        f"{s['train_positive_rate']:.3f}; valid AUC bounds: oracle {s['valid_oracle_auc']:.4f}, "
        f"without the history {s['valid_no_history_auc']:.4f}"
    )
    if not args.no_dvc:
        track_with_dvc(args.out)


def _import(args: argparse.Namespace, params: Params) -> None:
    from qin.data.importer import import_files

    record = import_files(args.src, args.out)
    print(f"imported {len(record['files'])} files from {args.src} into {args.out}/")
    if not args.no_dvc:
        track_with_dvc(args.out)


def _from_log(args: argparse.Namespace, params: Params) -> None:
    from qin.data.from_log import FromLogConfig, from_log

    shares = tuple(float(x) for x in args.split.split(","))
    if len(shares) != 3 or abs(sum(shares) - 1) > 1e-9 or min(shares) <= 0:
        raise ValueError(f"--split: expected three positive shares adding up to 1, found {args.split!r}")
    cfg = FromLogConfig(
        user=args.user,
        item=args.item,
        time=args.time,
        label=None if args.rating or args.negatives else args.label,
        rating=args.rating,
        threshold=args.threshold,
        negatives=args.negatives,
        item_key=args.item_key,
        tags=args.tags,
        tags_sep=args.tags_sep,
        title=args.title,
        vectors=tuple(c for c in (args.vectors or "").split(",") if c),
        history=args.history,
        split=(shares[0], shares[1], shares[2]),
        tag_vocab=params.validate.tag_vocab,
        previous_maps=args.previous_maps,
        seed=args.seed,
        sep=args.sep,
    )
    r = from_log(args.log, args.out, cfg, args.items)
    rows, rates = r["rows"], r["positive_rate"]
    print(
        f"wrote {args.out}/ from {args.log}: "
        + ", ".join(f"{s} {rows[s]:,} rows ({rates[s]:.1%} positive)" for s in rows)
        + f"; {r['n_users']:,} users, {r['n_items']:,} items, {r['n_tags']:,} tags; item_emb_d128: "
        f"{r['item_emb']}; {r['seconds']:.1f} s"
    )
    if not args.no_dvc:
        track_with_dvc(args.out)


def _join_keys(args: argparse.Namespace, params: Params) -> None:
    from qin.data.from_log import join_keys

    n = join_keys(args.prediction, args.data, args.out)
    print(f"wrote {args.out}: {n:,} rows with their original user and item keys")


def track_with_dvc(path: Path) -> None:
    """`dvc add` the data folder when this project uses DVC and the folder is inside it, so data.dvc names
    the new version; a folder elsewhere is written and left untracked (DVC refuses outputs outside its
    project). A failing `dvc add` is refused with DVC's own message."""
    if not Path(".dvc").is_dir():
        return
    if not path.resolve().is_relative_to(Path.cwd().resolve()):
        print(
            f"{path} is outside this DVC project ({Path.cwd()}): left untracked (DVC adds folders inside it)"
        )
        return
    cmd = [sys.executable, "-m", "dvc", "add", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        said = (
            "\n".join(x for x in (out.stderr.strip(), out.stdout.strip()) if x)
            or f"exit status {out.returncode}"
        )
        raise RuntimeError(f"dvc add {path} failed:\n{said}")
    print(f"{path}.dvc updated (commit it to record this data version)")


def _summary(name: str, result: Any, paths: dict[str, Path]) -> str | None:
    """One line for a stage's result (None: nothing to say, e.g. a torchrun process other than 0)."""
    out = paths.get("out_dir") or paths.get("out_path")
    if name == "validate":
        return f"validation passed: report in {out}/"
    if name == "embed":
        agreement = (result.neighbour_agreement or {}).get("subtopic", {})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in agreement.items())
        line = f"item table ({result.method}) in {out}/"
        return line + (f"; sub-topic agreement: {shown}" if shown else "")
    if name == "featurize":
        return f"features in {out}/ ({len(result.arrays)} arrays)"
    if name == "train":
        if result.model_hash is None:  # only the process that wrote the package (0 under torchrun)
            return None
        best = f"best epoch {result.best_epoch}, valid AUC {result.best_valid_auc:.4f}"
        return f"model package in {out}/ ({best})"
    if name == "evaluate":
        figures = result.to_json().items()
        return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures)
    if name == "predict":
        seconds = result.seconds
        return (
            f"{out}/submission.zip: {result.rows} rows scored in {seconds['score']:.1f} s "
            f"({result.rows_per_s:.0f} rows/s), {seconds['total']:.1f} s with the gate and the files"
        )
    if name == "register":
        from qin.registry.registration import registration_lines

        return "\n".join(registration_lines(result))
    return None


def _run_stage(args: argparse.Namespace, params: Params) -> None:
    """`qin <stage>`: the stage function on the given paths (defaults: the DVC workspace's)."""
    s = pipeline.stage(args.command)
    paths = {arg: getattr(args, arg) for arg in s.args()}
    extra = None
    for i in s.inputs:
        if i.stage == pipeline.MODEL:  # a registered version (downloaded once) or a package path
            from qin.registry.resolve import resolve_model

            ref = resolve_model(paths[i.arg] or params.predict.model, params.register)
            print(f"scoring with {ref.describe()}")
            paths[i.arg], extra = ref.path, ref.identity()
    # A resumable stage's checkpoint must belong to these settings and inputs: its key, by content.
    key = (args.key or pipeline.content_key(s, params, paths)) if s.resumable else None
    line = _summary(s.name, pipeline.call(s, paths, params, key=key, extra=extra), paths)
    if line:
        print(line)


def _promote(args: argparse.Namespace, params: Params) -> None:
    from qin.registry.judge import judge_on
    from qin.registry.promotion import promote
    from qin.registry.protocol import load_registry

    registry = load_registry(params.register)
    judge = judge_on(args.data, params, registry)
    r = promote(params.register, args.to, args.version, force=args.force, registry=registry, judge=judge)
    if r.moved:
        previous = f"from version {r.previous}" if r.previous else "(no previous holder)"
        print(
            f"{r.model_name} version {r.version} now holds '{r.alias}' {previous}: {r.reason}; "
            f"recorded as version tag {r.history_tag}"
        )
    else:
        print(f"{r.model_name}: {r.reason}; nothing to do")


def _gc(args: argparse.Namespace, params: Params) -> None:
    from qin.registry.protocol import load_registry
    from qin.registry.provenance import stage_keys
    from qin.runs.store import gc

    referenced = stage_keys(load_registry(params.register), params.register.model_name)
    removed = gc(referenced, args.keep, dry_run=args.dry_run)
    verb = "would free" if args.dry_run else "freed"
    for path, size in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path} ({size / 1e6:.1f} MB)")
    total = sum(size for _, size in removed)
    print(f"{verb} {total / 1e6:.1f} MB in {len(removed)} entries; kept what {len(referenced)} registered "
          f"versions and the {args.keep} most recent runs use")  # fmt: skip


def _show_params(args: argparse.Namespace, params: Params) -> None:
    from qin.settings.params import to_yaml

    print(to_yaml(params), end="")


def _from_log_parser(data_sub: Any) -> None:
    """`qin data from-log` and `qin data join-keys` (qin/data/from_log.py names the rules)."""
    p = data_sub.add_parser(
        "from-log", help="convert an interaction log (and an item table) into data/ in the challenge's schema"
    )
    p.add_argument("log", type=Path, help="the interactions: a parquet or CSV file")
    p.add_argument("--items", type=Path, help="the item table: a parquet or CSV file")
    p.add_argument("--sep", default=",", help="the separator of text (CSV) files (default: %(default)s)")
    p.add_argument("--out", type=Path, default=layout.DATA)
    for option, default, what in (
        ("--user", schema.USER, "the log's user key column"),
        ("--item", schema.TARGET, "the log's item key column"),
        ("--time", "timestamp", "the log's time column (numbers, or dates and times)"),
        ("--label", schema.LABEL, "the log's 0/1 label column"),
    ):
        p.add_argument(option, default=default, help=f"{what} (default: %(default)s)")
    p.add_argument("--rating", help="a rating column instead of a label: positive when >= --threshold")
    p.add_argument("--threshold", type=float, help="the rating that counts as positive")
    p.add_argument(
        "--negatives", type=int, default=0, help="a positives-only log: K sampled negatives per positive"
    )
    p.add_argument("--item-key", help="the item table's key column (default: the --item name)")
    p.add_argument("--tags", help="the item table's categories: a list column, or text split on --tags-sep")
    p.add_argument("--tags-sep", default="|", help="(default: %(default)s)")
    p.add_argument("--title", help="the item table's title column")
    p.add_argument("--vectors", help="the item table's vector columns, comma-separated")
    p.add_argument("--history", type=int, default=100, help="history length (default: %(default)s)")
    p.add_argument(
        "--split", default="0.8,0.1,0.1", help="train,valid,test shares in time (default: %(default)s)"
    )
    p.add_argument(
        "--previous-maps", type=Path, help="the previous version's maps/ folder: its keys keep their ids"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="for sampled negatives and the SVD (default: %(default)s)"
    )
    p.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on the output")
    p.set_defaults(fn=_from_log)
    p = data_sub.add_parser(
        "join-keys", help="a prediction.csv with the original user and item keys (from-log data)"
    )
    p.add_argument("prediction", type=Path, help="prediction.csv or submission.zip")
    p.add_argument("--data", type=Path, default=layout.DATA, help="the from-log data folder it scored")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    p.set_defaults(fn=_join_keys)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qin",
        description="QIN pipeline: data, validate, embed, featurize, train, evaluate, register, predict",
    )
    parser.add_argument(
        "--params", type=Path, default=layout.PARAMS, help="settings file (default: %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "params", help="print the resolved settings (presets applied, defaults filled in)"
    ).set_defaults(fn=_show_params)
    _data_parser(sub)
    for s in pipeline.STAGES:
        _stage_parser(sub, s)
    _promote_parser(sub)
    p = sub.add_parser(
        "gc",
        help="remove stage outputs (artifacts/stages/) that no registered version, alias or recent run uses",
    )
    p.add_argument("--keep", type=int, default=10, help="keep what the N most recent flow runs used")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    p.set_defaults(fn=_gc)
    return parser


def _data_parser(sub: Any) -> None:
    """`qin data synth`, `qin data import` and the log importer's commands."""
    data = sub.add_parser("data", help="create or import the raw data in data/")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "synth", help="write synthetic MicroLens_1M_x1 data with known click probabilities"
    )
    p.add_argument("--out", type=Path, default=layout.DATA)
    p.add_argument("--preset", choices=list(get_args(PresetName)), help="default: params data.preset")
    p.add_argument("--seed", type=int, help="default: params data.seed")
    p.add_argument("--workers", type=int, default=1, help="processes generating the rows (the same bytes)")
    p.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on the output")
    p.set_defaults(fn=_synth)
    p = data_sub.add_parser("import", help="copy the real challenge files (four parquet files) into data/")
    p.add_argument("src", type=Path, help="folder holding train/valid/test/item_info.parquet")
    p.add_argument("--out", type=Path, default=layout.DATA)
    p.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on the output")
    p.set_defaults(fn=_import)
    _from_log_parser(data_sub)


def _stage_parser(sub: Any, s: pipeline.Stage) -> None:
    """`qin <stage>`: an option per input and output of the stage table, defaulting to its workspace path."""
    p = sub.add_parser(s.name, help=s.help)
    p.set_defaults(fn=_run_stage)
    for i in s.inputs:
        if i.stage == pipeline.MODEL:
            p.add_argument(
                i.option,
                dest=i.arg,
                metavar="MODEL",
                help="a registered version by alias or number, 'auto' (the production alias, else "
                "staging) or a model package path (default: params predict.model)",
            )
            continue
        p.add_argument(i.option, dest=i.arg, type=Path, default=pipeline.workspace_path(i))
    for o in s.outputs:
        p.add_argument(o.option, dest=o.arg, type=Path, default=Path(o.workspace))
    if s.resumable:
        p.add_argument("--key", help="the key its checkpoint must carry (default: its key by content)")


def _promote_parser(sub: Any) -> None:
    p = sub.add_parser(
        "promote",
        help="give a registered version the staging alias (if it beats the holder by register.min_delta on "
        "its data: both re-scored there when the holder's data version differs) or, explicitly, production "
        "(alias register.production_alias)",
    )
    p.set_defaults(fn=_promote)
    p.add_argument("--to", required=True, choices=["staging", "production"])
    p.add_argument("--version", help="the model version (default: the newest)")
    p.add_argument(
        "--data",
        type=Path,
        default=layout.DATA,
        help="the candidate's data version, where both are scored when the holder's data differs "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="override the AUC and data-version rules (recorded in the history); never missing artifacts",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("qin").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        # `data import` reads no settings; every other command does.
        params = Params() if args.fn is _import else load_params(args.params)
        args.fn(args, params)
    except Exception as exc:  # a stage's own errors name the file/column/key; show them without a traceback
        if args.verbose or not isinstance(exc, ValueError | FileNotFoundError | KeyError | RuntimeError):
            raise
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"qin {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0
