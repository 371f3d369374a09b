"""The ``slimembed`` command: generate, prepare, train, bench, demo.

Run ``slimembed COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


def _cmd_generate(args: argparse.Namespace) -> int:
    from slimembed.datasets import generate
    from slimembed.datasets.synthetic import parse_knob

    kw = {} if args.scale is None else {"scale": args.scale}
    if args.small_field_max is not None:
        kw["small_field_max"] = args.small_field_max
    for item in args.knob:
        name, value = parse_knob(args.profile, item)
        kw[name] = value
    if args.workers is not None:
        if args.format != "tsv":
            raise ValueError("--workers applies to --format tsv only")
        kw["workers"] = args.workers
    elif args.format == "tsv":
        kw["workers"] = None  # every core
    rep = generate(args.out, rows=args.rows, seed=args.seed, format=args.format, profile=args.profile,
                   progress=True, **kw)
    _print_report(rep, args.json, "generate")
    return 0


def _print_report(rep: Any, as_json: bool, verb: str) -> None:
    """The full report as JSON (``--json``; it is also in the output's report.json), or a few
    human lines: rows per split, bad rows, label rate, vocabulary, output, time."""
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep.__dict__)
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    rows = d.get("rows_per_split") or d.get("rows")
    if isinstance(rows, dict):
        total = sum(int(v) for v in rows.values())
        split = ", ".join(f"{k} {int(v):,}" for k, v in rows.items())
        print(f"{verb}: {total:,} rows ({split})")
    else:
        print(f"{verb}: {int(rows or 0):,} rows")
    bad = d.get("bad_rows")
    if isinstance(bad, dict):
        print(f"bad rows: {sum(bad.values()):,}" + (f" ({', '.join(f'{k} {v}' for k, v in bad.items())})" if bad else ""))
    rate = d.get("label_rate") or d.get("ctr_per_split")
    if isinstance(rate, dict):
        print("label rate: " + ", ".join(f"{k} {float(v):.4f}" for k, v in rate.items()))
    vocab = d.get("vocabulary_sizes") or d.get("num_embeddings")
    if isinstance(vocab, dict):
        print(f"vocabulary: {sum(int(v) for v in vocab.values()):,} rows over {len(vocab)} fields")
    if d.get("teacher_auc") is not None:
        print(f"teacher AUC (the best any model can reach here): {d['teacher_auc']:.4f}")
    print(f"output: {d.get('out_dir')} ({float(d.get('seconds') or 0):.1f} s"
          + (f", {float(d['rows_per_s']):,.0f} rows/s" if d.get("rows_per_s") else "") + "); the full report: "
          + ("report.json there" if d.get("format", "processed") == "processed" else "--json"))


def _parse_split(text: str) -> tuple:
    """``8:1:1`` or ``0.8:0.1:0.1`` -> the train:val:test weights (a clear error otherwise)."""
    parts = text.split(":")
    try:
        w = tuple(float(x) for x in parts)
    except ValueError:
        w = ()
    if len(w) != 3 or any(x < 0 for x in w) or w[0] <= 0:
        raise ValueError(f"--split {text!r}: give train:val:test weights such as 8:1:1 or 0.8:0.1:0.1, or by_file")
    return tuple(int(x) if x == int(x) else x for x in w)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from slimembed.datasets import prepare_criteo, prepare_table

    for p in args.inputs:
        if not Path(p).exists():
            raise FileNotFoundError(f"input file {p!r} does not exist")
    split = "by_file" if args.split == "by_file" else _parse_split(args.split)
    common = dict(min_count=args.min_count, split=split, seed=args.seed,
                  vocabulary_free=args.vocabulary_free, on_bad_row=args.on_bad_row)
    if args.format == "criteo":
        rep = prepare_criteo(args.inputs, args.out, dense=args.dense, workers=args.workers, **common)
    else:
        if args.workers is not None:
            raise ValueError("--workers applies to --format criteo only")
        from slimembed.datasets import AVAZU_SPEC

        if args.format == "avazu":
            spec = AVAZU_SPEC
        else:
            if not args.schema:
                raise ValueError("--format table needs --schema FILE.yaml (label, dense, categorical, multi_valued)")
            from slimembed.ctr.config import load_config

            spec = load_config(args.schema, "table_schema")
        rep = prepare_table(args.inputs, args.out, spec, **common)
    _print_report(rep, args.json, "prepare")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from slimembed.ctr.experiment import load_config, result_summary, run_experiment

    from slimembed.ctr.distributed import is_main_process

    cfg = load_config(args.config, args.set)
    record = run_experiment(cfg)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    for line in result_summary(record):
        print(line)
    if record.get("output_path"):
        print(f"result record: {record['output_path']}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "train":
        from slimembed.ctr.bench import main as bench_train_main

        return int(bench_train_main(args.rest) or 0)
    if args.what == "tables":
        from slimembed.ctr.bench_tables import main as bench_tables_main

        return int(bench_tables_main(args.rest) or 0)
    if args.what == "prepare":
        from slimembed.datasets.bench import main as bench_prepare_main

        bench_prepare_main(args.rest)
        return 0
    raise ValueError(f"unknown benchmark {args.what!r}; choose train, tables or prepare")


def _cmd_demo(args: argparse.Namespace) -> int:
    from slimembed.ctr.demo import run_demo

    run_demo(out_dir=args.out, rows=args.rows, methods=args.methods, compression=args.compression,
             epochs=args.epochs, seed=args.seed)
    return 0


def _cmd_optembed(args: argparse.Namespace) -> int:
    from slimembed.search.optembed import run_pipeline

    overrides = list(args.set) + ([f"output={args.out}"] if args.out else [])
    summary = run_pipeline(args.config, overrides, stop_after=args.stop_after)
    if "test_auc" in summary:
        print(f"OptEmbed ({summary['variant']}, {summary['model']}): test AUC {summary['test_auc']:.4f}, "
              f"logloss {summary['test_logloss']:.4f}; kept rows {summary['kept_rows']:,}/{summary['rows']:,}; "
              f"exported field table {summary['exported_table_bytes']:,} bytes "
              f"({summary['compression']:.2f}x vs full fp32)")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from slimembed.search.sweep import run_sweep

    run_sweep(args.config, args.set, n_trials=args.n_trials, total_trials=args.total_trials,
              storage=args.storage, study_name=args.study)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from slimembed.search.report import report

    report(args.source, out_dir=args.out, study=args.study, metric=args.metric)
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from slimembed.search.benchmark import run_benchmark

    run_benchmark(args.config, args.set, out=args.out, dry_run=args.dry_run)
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    import json

    from slimembed.tables import available_methods
    from slimembed.tables.registry import method_info

    names = [args.method] if args.method else available_methods(include_export=args.all)
    infos = [method_info(m) for m in names]  # an unknown name raises, listing the known ones
    if args.json:
        print(json.dumps(infos if args.method is None else infos[0], indent=2, default=str))
        return 0
    if args.method is None:
        print(f"{'method':<16} {'budget knob':<14} {'vocab-free':<10} {'shardable':<9}  what it is")
        for i in infos:
            print(f"{i['method']:<16} {str(i['budget_knob'] or '-'):<14} {('yes' if i['vocabulary_free'] else 'no'):<10} "
                  f"{('yes' if i['shardable'] else 'no'):<9}  {i['summary'][:90]}")
        print("\n`slimembed methods NAME` shows one method's arguments and defaults.")
        return 0
    i = infos[0]
    print(f"{i['method']} ({i['class']}): {i['summary']}")
    print(f"budget knob: {i['budget_knob'] or '- (not sized by a budget)'}"
          + (f"; solved from the budget: {', '.join(i['solved_knobs'])}" if i["solved_knobs"] else ""))
    print("arguments (defaults): " + ", ".join(f"{k}={v!r}" for k, v in i["arguments"].items()))
    if i["search_space"]:
        print(f"sweep space: {i['search_space']}")
    print(f"vocabulary-free: {'yes' if i['vocabulary_free'] else 'no'}; sparse gradients: "
          f"{'yes' if i['supports_sparse'] else 'no'}; quantizable export: {'yes' if i['quantizable'] else 'no'}")
    print("DMP-shardable: " + ("yes" if i["shardable"] else f"no ({i['not_shardable_reason']})"))
    if i["not_swept_reason"]:
        print(f"left out of sweeps: {i['not_swept_reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimembed", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    from slimembed.datasets.synthetic import DEFAULT_PROFILE, PROFILES

    g = sub.add_parser("generate", help="write synthetic Criteo-like data (processed or raw TSV)")
    g.add_argument("--out", required=True, help="output directory (processed) or .tsv file")
    g.add_argument("--rows", type=int, default=1_000_000)
    g.add_argument("--scale", type=float, default=None, help="cardinality scale vs Criteo Kaggle (default 0.02: ~730k values)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                   help=f"teacher preset (default {DEFAULT_PROFILE}: calibrated against real Criteo; "
                        "v1: the earlier results' data)")
    g.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="override one teacher knob of the profile, e.g. --knob interaction_std=0.5")
    g.add_argument("--small-field-max", type=int, default=None,
                   help="fields up to this many values keep Criteo's size (default 10000)")
    g.add_argument("--format", choices=["processed", "tsv"], default="processed")
    g.add_argument("--json", action="store_true", help="print the full report as JSON instead of a summary")
    g.add_argument("--workers", type=int, default=None,
                   help="--format tsv: processes writing chunks (default: every core; same bytes for any)")
    g.set_defaults(func=_cmd_generate)

    r = sub.add_parser("prepare", help="preprocess raw Criteo/Avazu/CSV/Parquet into the processed format")
    r.add_argument("inputs", nargs="+", help="input files (Criteo train.txt / day_N, CSV, TSV, Parquet)")
    r.add_argument("--out", required=True)
    r.add_argument("--format", choices=["criteo", "avazu", "table"], default="criteo")
    r.add_argument("--schema", help="YAML schema for --format table")
    r.add_argument("--min-count", type=int, default=10)
    r.add_argument("--dense", choices=["log", "bucket"], default="log")
    r.add_argument("--split", default="8:1:1", help="train:val:test weights (8:1:1 or 0.8:0.1:0.1), or by_file")
    r.add_argument("--json", action="store_true", help="print the full report as JSON instead of a summary")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--vocabulary-free", action="store_true", help="stable 64-bit ids, no vocabulary")
    r.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    r.add_argument("--workers", type=int, default=None,
                   help="criteo: processes (default: every core; the output is the same bytes for any)")
    r.set_defaults(func=_cmd_prepare)

    t = sub.add_parser("train", help="train and evaluate one experiment from a YAML config")
    t.add_argument("--config", help="experiment YAML (data/model/table/train/output)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set table.method=hash --set table.compression=10")
    t.set_defaults(func=_cmd_train)

    b = sub.add_parser("bench", help="benchmarks: train (embedding optimizers vs torchrec), tables, prepare")
    b.add_argument("what", choices=["train", "tables", "prepare"])
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see `bench train --help`)")
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("demo", help="generate Criteo-like data, train DeepFM, print AUC and memory")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--rows", type=int, default=None, help="synthetic rows (default: the demo size)")
    d.add_argument("--methods", nargs="+", default=None, help="table methods to compare (default: all that fit)")
    d.add_argument("--compression", type=float, default=10.0)
    d.add_argument("--epochs", type=int, default=1)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    o = sub.add_parser("optembed", help="OptEmbed: supernet -> evolutionary search -> retrain -> export (resumable)")
    o.add_argument("--config", required=True, help="pipeline YAML (data/model/train/optembed/output)")
    o.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set optembed.generations=10")
    o.add_argument("--out", default=None, help="output directory (overrides the config's output)")
    o.add_argument("--stop-after", choices=["supernet", "search", "retrain", "export"], default=None,
                   help="end after this stage (rerun to continue)")
    o.set_defaults(func=_cmd_optembed)

    sw = sub.add_parser("sweep", help="Optuna sweep over table methods and knobs (run it in several workers)")
    sw.add_argument("--config", required=True, help="sweep YAML (experiment/methods/space/exclude/study)")
    sw.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a value, e.g. --set study.mode=budget --set experiment.train.epochs=2")
    sw.add_argument("--n-trials", type=int, default=None, help="trials this worker runs at most")
    sw.add_argument("--total-trials", type=int, default=None, help="study-wide cap over all workers")
    sw.add_argument("--storage", default=None,
                    help="SQLite file, journal file (*.log) or Optuna URL (default: WORKDIR/optuna.db)")
    sw.add_argument("--study", default=None, help="study name (default: the config's study.name)")
    sw.set_defaults(func=_cmd_sweep)

    rp = sub.add_parser("report", help="Pareto front (AUC vs table bytes): CSV, JSON, Markdown, PNG")
    rp.add_argument("source", help="a study storage (SQLite/journal file or URL) or a directory of result JSONs")
    rp.add_argument("--study", default=None, help="study name (needed when the storage holds several)")
    rp.add_argument("--out", default=None, help="output directory (default: beside the source)")
    rp.add_argument("--metric", choices=["val", "test"], default="val", help="AUC the front is built on")
    rp.set_defaults(func=_cmd_report)

    bm = sub.add_parser("benchmark", help="the fixed grid: every method x budgets x seeds, table + plot (resumable)")
    bm.add_argument("--config", default=None, help="benchmark YAML merged onto the default grid")
    bm.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a value, e.g. --set seeds=[0,1] --set generate.rows=200000")
    bm.add_argument("--out", default=None, help="output directory (default: the config's out, runs/benchmark)")
    bm.add_argument("--dry-run", action="store_true", help="check and list the cells, train nothing")
    bm.set_defaults(func=_cmd_benchmark)

    me = sub.add_parser("methods", help="list the table methods (paper, budget knob, vocabulary-free, shardable), or one in full")
    me.add_argument("method", nargs="?", default=None, help="one method's arguments, defaults and facts")
    me.add_argument("--all", action="store_true", help="also the export-only kinds (quantized, optembed-compact...)")
    me.add_argument("--json", action="store_true", help="print JSON")
    me.set_defaults(func=_cmd_methods)
    return p


# ---------------------------------------------------------------------------------- error boundary
def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` before or after the command: show the traceback of a user error too."""
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the full traceback of an error (user errors print one line)")
    for action in parser._actions:  # the subcommands' parsers (argparse keeps them on the action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the full traceback of an error")


def user_error_message(e: BaseException) -> Optional[str]:
    """One or two lines for a failure the user caused (a config, a path, the data), or ``None`` for
    an internal error (a bug: it keeps its traceback). User errors: :class:`~slimembed.ctr.config.UserError`,
    ``ValueError`` (bad values and data), file-system errors on the paths given (missing, not
    permitted, disk full, read-only), malformed YAML and pydantic validation errors."""
    import yaml
    from pydantic import ValidationError

    from slimembed.ctr.config import UserError

    if isinstance(e, OSError) and not isinstance(e, UserError):
        if e.filename is None and e.errno is None:
            msg = str(e)  # e.g. FileNotFoundError("input file ... does not exist")
        else:
            where = f": {e.filename}" if e.filename is not None else ""
            msg = f"{e.strerror or type(e).__name__}{where}"
            if e.filename2 is not None:
                msg += f" -> {e.filename2}"
    elif isinstance(e, (UserError, ValueError, yaml.YAMLError, ValidationError)):
        msg = str(e)
    else:
        return None
    lines = [ln for ln in msg.strip().splitlines() if ln.strip()] or [type(e).__name__]
    return "\n".join(lines[:2]) + (" ..." if len(lines) > 2 else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command. A user error exits with status 2 and one or two lines on stderr
    (``--debug``: with the traceback); an internal error keeps its traceback."""
    parser = build_parser()
    _add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        msg = user_error_message(e)
        if msg is None:
            raise
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        print(f"slimembed {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
