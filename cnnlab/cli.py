"""The ``cnnlab`` command: parse the arguments, call one function, print, set the exit code.

Exit codes: 0 success; 1 the work ran and failed (a crashed or diverged run, an
interrupted one); 2 bad input (study file, override, paths), reported in one
paragraph before any work starts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# glibc returns freed memory to the OS eagerly; a training step frees and re-allocates the
# same large buffers every iteration, and on CPU that churn cost ~20 % of step time
# (ANCHORS.md). The tunable must be in the environment before the process starts, so the
# CLI re-executes itself once with it set (CNNLAB_NO_REEXEC=1 turns this off). OpenMP threads that
# spin while waiting fight every other process for the cores: on a shared 2-core machine a
# 2-thread step ran 9x faster with OMP_WAIT_POLICY=PASSIVE (BENCHMARKS.md); it too must be set
# before torch starts.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def _reexec_with_allocator_tuning() -> None:
    if sys.platform != "linux" or os.environ.get("CNNLAB_NO_REEXEC") or "GLIBC_TUNABLES" in os.environ:
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES, CNNLAB_NO_REEXEC="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        os.execve(sys.executable, [sys.executable, "-m", "cnnlab.cli", *sys.argv[1:]], env)
    except OSError:
        pass  # not fatal: run without the tuning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too (cnnlab train s.yaml --out r lr=...)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops as 'interrupted'): one line, 130
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into bad input (2), could not save (1), or a bug (raised)
        if _is_input_error(e):
            print(f"cnnlab: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # disk full, read-only folder, file too large: the work ran, could not be saved
            print(f"cnnlab: error: {e}", file=sys.stderr)
            return 1
        raise


# Errors that mean bad input (exit code 2), by module. A module not imported yet cannot have raised
# its error, so the check looks only in sys.modules: the CLI imports no heavy module just to catch.
INPUT_ERRORS = (("cnnlab.config.schema", "ConfigError"), ("cnnlab.registry", "UnknownName"), ("cnnlab.data", "DataError"),
                ("cnnlab.runs", "CheckpointError"), ("cnnlab.models.transfer", "TransferError"))


def _is_input_error(e: BaseException) -> bool:
    for module, name in INPUT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


# ----------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from cnnlab import lifecycle
    from cnnlab.config.load import load_config
    from cnnlab.runs import succeeded

    # argparse gives the first positional to `study`: with --resume (or when it is no file) a key=value
    # there is the first override, never a study path.
    if args.study and "=" in args.study and (args.resume or not Path(args.study).exists()):
        args.study, args.overrides = None, [args.study, *args.overrides]
    if args.resume_from is not None and not args.resume:
        raise _config_error(f"--from {args.resume_from} chooses the checkpoint a resume continues from; use it with "
                            "--resume RUN_DIR")
    if args.resume:
        if args.study:
            raise _config_error(f"--resume {args.resume} continues that run with its own config.yaml; give changes "
                                f"as key=value overrides, not a study file ({args.study})")
        run_dir = Path(args.resume)
        if run_dir.exists() and not run_dir.is_dir():
            raise _config_error(f"--resume {run_dir}: not a run folder (it is a file)")
        cfg = load_config(run_dir / "config.yaml", args.overrides, anchor=False)  # as its checkpoint has it
        out = run_dir
        if not (run_dir / "last.pt").exists() and not (run_dir / "summary.json").exists():
            print(f"{run_dir} has no last.pt (stopped before its first checkpoint): starting it afresh", flush=True)
    else:
        if not args.study:
            hint = f" ({args.overrides[0]} is an override)" if args.overrides else ""
            raise _config_error(f"train needs a study file (cnnlab train STUDY.yaml [key=value ...]) or --resume "
                                f"RUN_DIR{hint}")
        cfg = load_config(args.study, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
    # the one after-run path (findings, curves, report, uploads), also after a failure that wrote a summary
    summary = lifecycle.train_and_finish(cfg, out, resume=bool(args.resume), force=args.force, verbose=args.verbose,
                                         resume_from=args.resume_from or "last")
    return 0 if succeeded(summary["status"]) else 1


def cmd_eval(args) -> int:
    if args.overrides:  # another data set: every image of it, with the run's own preprocessing
        from cnnlab.inference.predict import evaluate_on

        result = evaluate_on(Path(args.run_dir), args.overrides, checkpoint=args.checkpoint,
                             split=args.split or "all")
    else:
        from cnnlab.inference.predict import evaluate_run

        result = evaluate_run(Path(args.run_dir), splits=(args.split or "test").split(","), checkpoint=args.checkpoint)
    print(json.dumps(result, indent=2) if args.json else result["text"])
    return 0


def cmd_predict(args) -> int:
    from cnnlab.inference.load import load_run
    from cnnlab.inference.predict import format_table, predict_paths, write_predictions

    if args.top_k < 1:
        raise _config_error(f"--top-k must be at least 1, got {args.top_k}")
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise _config_error(f"--out {args.out}: must end in .csv or .json")
    if args.out:  # not a folder, not a run's own file: refused before any work (cnnlab.outputs)
        from cnnlab.outputs import check_out_file

        check_out_file(args.out)
    run = load_run(Path(args.run_dir), args.checkpoint)
    if args.tta and run.preprocess.get("tta", "none") == "none":
        raise _config_error(f"--tta: {args.run_dir} was trained with train.tta=none; there is no test-time "
                            "augmentation to apply")
    rows, problems = predict_paths(run, args.paths, top_k=args.top_k, tta=args.tta, calibrated=args.calibrated)
    for line in problems:
        print(f"cnnlab: skipped {line}", file=sys.stderr)
    print(format_table(rows))
    if args.out:
        print(f"wrote {write_predictions(args.out, rows)} ({len(rows)} images)")
    return 0


def cmd_lr_find(args) -> int:
    from cnnlab.api import lr_find

    if args.study is None:
        raise _config_error("lr-find needs a study file: cnnlab lr-find STUDY.yaml [key=value ...] [--out DIR]")
    print(f"lr-find: {args.study}, lr from {args.start_lr:g} to {args.end_lr:g} over at most {args.steps} steps",
          flush=True)
    t0 = time.perf_counter()
    r = lr_find(args.study, args.overrides, args.out, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                smooth=args.smooth, diverge=args.diverge, rule=args.rule)
    print(f"{len(r.lrs)} steps in {time.perf_counter() - t0:.1f} s; stopped: {r.stopped}")
    print(f"suggested lr: {r.suggestion:.2g}" if r.suggestion is not None else "no lr suggested", f"({r.rule})")
    print(f"paste into the study file:  {r.line}")
    print(f"wrote {Path(r.out) / 'lr_find.png'} and lr_find.json")
    return 0


def cmd_explain(args) -> int:
    from cnnlab.inference.explain import explain_paths
    from cnnlab.inference.load import load_run

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise _config_error(f"--out {args.out}: is a file; explain writes its pictures into a folder")
    run = load_run(Path(args.run_dir), args.checkpoint)
    out = Path(args.out) if args.out else run.run_dir / "explain"
    rows, problems = explain_paths(run, args.paths, out, args.target)
    for line in problems:
        print(f"cnnlab: skipped {line}", file=sys.stderr)
    for r in rows:
        explained = "" if r["explained"] == r["class"] else f", explained: {r['explained']}"
        print(f"{r['file']}: {r['class']} ({r['probability']:.4f}{explained}) -> {r['png']}")
    print(f"wrote {len(rows)} Grad-CAM picture(s) to {out}")
    return 0


def cmd_export(args) -> int:
    from cnnlab.inference.export import export, max_difference
    from cnnlab.inference.load import load_run

    t0 = time.perf_counter()
    path = export(Path(args.run_dir), args.format, args.out, checkpoint=args.checkpoint)
    diff = max_difference(load_run(Path(args.run_dir), args.checkpoint), path, args.format)
    check = "" if diff is None else f"; max |difference| from PyTorch on 4 random inputs: {diff:.2e}"
    print(f"wrote {path} ({args.format}, {path.stat().st_size:,} bytes) in {time.perf_counter() - t0:.1f} s{check}")
    return 0


def cmd_summary(args) -> int:
    from cnnlab.data import dataset_info
    from cnnlab.config.load import load_config
    from cnnlab.models.layers import format_table, summarize
    from cnnlab.models.transfer import build_model

    overrides = [f"model.name={args.model}", f"data.name={args.dataset}", *args.overrides]
    cfg = load_config(None, overrides)
    info = dataset_info(cfg.data.name)
    channels = cfg.data.channels or info.in_channels or 3
    size = cfg.data.resize or info.image_size or 32
    model, _ = build_model(cfg, info.num_classes or 10, channels)
    result = summarize(model, (channels, size, size))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_sweep(args) -> int:
    from cnnlab.runs import FINAL_STATUSES
    from cnnlab.sweeps.run import run_sweep

    rows = run_sweep(args.sweep, out_dir=args.out, workers=args.workers, executor=args.executor,
                     address=args.address, dry_run=args.dry_run, wait=args.wait,
                     resources={"cpu": args.cpus_per_run, "gpu": args.gpus_per_run})
    if args.dry_run:
        return 0
    return 0 if all(r.get("status") in FINAL_STATUSES for r in rows) else 1


def cmd_compare(args) -> int:
    from cnnlab.reporting.compare import write_compare

    text = write_compare(Path(args.dir), by=args.by.split(",") if args.by else None, metric=args.metric)
    print(text)
    return 0


def cmd_claims(args) -> int:
    from cnnlab.reporting import claims
    from cnnlab.sweeps.plan import load_sweep

    claim_set = (claims.from_plan(load_sweep(args.sweep).to_dict(), str(args.sweep)) if args.sweep
                 else claims.load_claims(Path(args.dir)))
    if not claim_set.claims:
        raise _config_error(f"{claim_set.source}: no claims: to judge; a sweep file lists them under claims: "
                            "(see docs/studies/README.md)")
    verdicts = claims.judge_sweep(Path(args.dir), claim_set)
    print(claims.to_json(verdicts) if args.json else claims.markdown(verdicts))
    return 0


def cmd_report(args) -> int:
    from cnnlab.reporting.html import build_report

    t0 = time.perf_counter()
    counts: dict = {}
    path = build_report(Path(args.dir), force=args.force, counts=counts)
    runs = f" (run reports: {counts['built']} built, {counts['current']} up to date)" if counts else ""
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s{runs}")
    if counts.get("plots"):  # a sweep report's plots, as PNG files beside it
        print("plots: " + ", ".join(str(p) for p in counts["plots"]))
    return 0


def cmd_data(args) -> int:
    from cnnlab.data import describe_data, resolve_root

    root = resolve_root({"root": args.root})
    check = args.action == "check"
    entries = describe_data(root, check=check)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    print(f"data root: {root}")
    bad = False
    for e in entries:
        state = "present" if e.get("present") else "missing"
        print(f"- {e['name']:<14} {state:<8} {e.get('location', '')}  {e.get('message', '')}")
        for f in e.get("files", []) if check else []:
            ok = f.get("md5_ok")
            bad |= ok is False
            mark = {True: "ok", False: "BAD", None: "-"}[ok]
            print(f"    {mark:<4} {f['path']} ({f.get('bytes', '?')} bytes)")
    return 1 if bad else 0


def cmd_models(args) -> int:
    from cnnlab.catalog import format_models, model_entries

    entries = model_entries()
    print(json.dumps(entries, indent=2) if args.json else format_models(entries))
    return 0


def cmd_options(args) -> int:
    from cnnlab.catalog import format_options, option_entries

    entries = option_entries(args.section)
    print(json.dumps(entries, indent=2) if args.json else format_options(entries))
    return 0


def _config_error(message: str):
    from cnnlab.config.schema import ConfigError

    return ConfigError(message)


# ----------------------------------------------------------------------------- parser


def add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train one study file into a run folder",
                              epilog="Every key a study file or an override may set, with its type, default and "
                                     "help: cnnlab options [SECTION]; the models and their options: cnnlab models.")
    p.add_argument("study", nargs="?", help="study YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.01 (the keys: cnnlab options)")
    p.add_argument("--out", help="run folder (default runs/<timestamp>-<study>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--from", dest="resume_from", metavar="best|last|PATH", default=None,
                   help="with --resume: the checkpoint to continue from: last (default), best, or a checkpoint file "
                        "of the run; the curve points after it are dropped and last.pt becomes it")
    p.add_argument("--force", action="store_true", help="overwrite a run folder that already holds a run")
    p.add_argument("--verbose", action="store_true",
                   help="print the whole config at the start (default: only the settings that differ from the "
                        "defaults; config.yaml always holds all of them)")
    p.set_defaults(func=cmd_train)


def add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval",
                              help="re-score a run's best checkpoint, or score it on another labelled data set")
    p.add_argument("run_dir", help="a run folder")
    p.add_argument("overrides", nargs="*",
                   help="data.key=value to score another labelled data set with the run's preprocessing, e.g. "
                        "data.root=photos/ (its class names must be the run's); every image of it is scored")
    p.add_argument("--split", help="comma-separated train,val,test of the run's data (default test); with data "
                                   "overrides: all (default), train or test part of the other data set")
    p.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or last.pt")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_eval)


def add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run_dir", help="a run folder (its best checkpoint and saved preprocessing are used)")
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--out", help="also write the predictions to this .csv or .json file")
    p.add_argument("--tta", action="store_true",
                   help="average over the run's test-time augmented views (only for runs trained with train.tta)")
    p.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or last.pt")
    p.add_argument("--calibrated", action="store_true",
                   help="probabilities after temperature scaling (the temperature fitted on the validation split "
                        "at the end of training: summary.json calibration); the classes stay the same")
    p.set_defaults(func=cmd_predict)


def add_lr_find(subparsers) -> None:
    p = subparsers.add_parser("lr-find", help="learning-rate range test of a study: a suggested lr and a plot",
                              epilog="The lr grows geometrically from --start-lr to --end-lr, one training step each "
                                     "on the study's own data, network and optimizer; it stops when the smoothed "
                                     "loss exceeds --diverge times its minimum. Writes lr_find.png and lr_find.json "
                                     "(no checkpoint, no run).")
    p.add_argument("study", nargs="?", help="study YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.name=sgd (the keys: cnnlab options)")
    p.add_argument("--out", help="folder for lr_find.png and lr_find.json (default runs/<timestamp>-<study>-lr-find)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="the first step's lr (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="the last step's lr (default 10)")
    p.add_argument("--steps", type=int, default=200, help="steps from --start-lr to --end-lr (default 200)")
    p.add_argument("--smooth", type=float, default=0.9,
                   help="the moving average's weight on the past, in [0, 1) (default 0.9)")
    p.add_argument("--diverge", type=float, default=4.0,
                   help="stop when the smoothed loss exceeds this many times its minimum (default 4)")
    p.add_argument("--rule", default="steepest", choices=("steepest", "min10"),
                   help="steepest: where the smoothed loss falls fastest before its minimum (default); "
                        "min10: a tenth of the lr at the minimum")
    p.set_defaults(func=cmd_lr_find)


def add_explain(subparsers) -> None:
    p = subparsers.add_parser("explain", help="Grad-CAM heat maps: where in each image a trained run looked")
    p.add_argument("run_dir", help="a run folder of a convolutional network")
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--out", help="folder for the <name>.gradcam.png pictures (default RUN_DIR/explain)")
    p.add_argument("--class", dest="target", metavar="CLASS",
                   help="explain this class instead of the predicted one")
    p.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or last.pt")
    p.set_defaults(func=cmd_explain)


def add_export(subparsers) -> None:
    p = subparsers.add_parser("export",
                              help="write a run's best checkpoint as ONNX or TorchScript, preprocessing included")
    p.add_argument("run_dir", help="a run folder")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True,
                   help="onnx (needs the export extra: pip install 'cnnlab[export]') or torchscript")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx or model.pt")
    p.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or last.pt")
    p.set_defaults(func=cmd_export)


def add_summary(subparsers) -> None:
    p = subparsers.add_parser("summary", help="layer table, parameters and FLOPs of a model")
    p.add_argument("model", help="a model name (see the model registry), e.g. lenet5 or resnet20")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. model.activation=relu")
    p.add_argument("--dataset", default="mnist", help="the data set whose image size and classes to assume")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)


def add_sweep(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a sweep file (settings × seeds)")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--out", help="sweep folder (default sweeps/<sweep name>)")
    p.add_argument("--workers", type=int, default=1, help="runs at the same time (default 1)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local processes (default) or a Ray cluster")
    p.add_argument("--address", help="Ray cluster address HOST:PORT, as `ray start --head` printed (default: "
                   "$RAY_ADDRESS, else a private local Ray instance)")
    p.add_argument("--cpus-per-run", type=float, help="Ray executor: CPUs each run asks for (fractions allowed; "
                   "default: the sweep file's resources.cpu, else 1); the run's torch threads follow it")
    p.add_argument("--gpus-per-run", type=float, help="Ray executor: GPUs each run asks for (0.5: two runs share "
                   "a GPU; default: the sweep file's resources.gpu, else 1 when the cluster has GPUs and "
                   "train.device is auto or cuda)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and write nothing")
    p.add_argument("--wait", action="store_true",
                   help="if another sweep command is writing the same --out, wait for it instead of refusing")
    p.set_defaults(func=cmd_sweep)


def add_compare(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare a sweep's runs: mean ± sd, CI, Welch's test")
    p.add_argument("dir", help="a sweep folder")
    p.add_argument("--by", help="key1[,key2]: rows, then columns (default: the keys the sweep varies; base: "
                   "one row per base study, pooling a one-setting sweep's seeds)")
    p.add_argument("--metric", default="test.accuracy", help="the metric to compare (default test.accuracy)")
    p.set_defaults(func=cmd_compare)


def add_claims(subparsers) -> None:
    p = subparsers.add_parser("claims", help="judge a sweep's claims on its results: the verdict table")
    p.add_argument("dir", help="a sweep folder")
    p.add_argument("--sweep", help="the sweep file whose claims: to judge (default: those its plan.json recorded)")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.set_defaults(func=cmd_claims)


def add_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="write report.html for a run or a sweep folder (a sweep's plots also "
                                              "as PNG files in its plots/ folder)")
    p.add_argument("dir", help="a run folder or a sweep folder")
    p.add_argument("--force", action="store_true",
                   help="rebuild every run's report and redraw its curves (default: a sweep reuses the run reports "
                        "and curves.png files that are newer than their run's files)")
    p.set_defaults(func=cmd_report)


def add_models(subparsers) -> None:
    p = subparsers.add_parser("models",
                              help="the models: parameters, input size, each family's options and defaults")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_models)


def add_options(subparsers) -> None:
    p = subparsers.add_parser("options",
                              help="every config key a study file may set: type, default, range and help")
    p.add_argument("section", nargs="?", help="one section (data, data.augment, model, optim, sched, loss, train, "
                                             "train.early_stopping); default: all of them")
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=cmd_options)


def add_data(subparsers) -> None:
    p = subparsers.add_parser("data", help="which data sets are present, and their checksums")
    p.add_argument("action", choices=["list", "check"], help="list: what is present; check: also verify checksums")
    p.add_argument("--root", help="data root (default $CNNLAB_DATA or ~/.cache/cnnlab)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_data)


COMMANDS = (add_train,
            add_lr_find,
            add_eval,
            add_predict,
            add_explain,
            add_export,
            add_summary,
            add_sweep,
            add_compare,
            add_claims,
            add_report,
            add_models,
            add_options,
            add_data)


def build_parser() -> argparse.ArgumentParser:
    """The cnnlab parser: one add_<command> function per subcommand (a new command: one function and one entry
    in COMMANDS)."""
    from cnnlab.version import __version__

    p = argparse.ArgumentParser(prog="cnnlab", description="Image-classification studies from one study file.")
    p.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    subparsers = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return p


def entry_point() -> None:
    _reexec_with_allocator_tuning()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
