"""The ``gs-tune`` command: train | launch | resume | results | report | evaluate | tensorboard.

Every error gs-tune raises on purpose (GsTuneError) becomes one line on
stderr and exit code 2; argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gs_tune.data.prepare import register as register_data_commands
from gs_tune.errors import ConfigError, GsTuneError


def _read_yaml_config(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError("config", f"cannot parse {path}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of config fields, got {type(data).__name__}")
    return data


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--inner-lr``), default None so YAML values survive; the
    help is the field's docstring and its default."""
    from gs_tune.config import TrainConfig, field_docs

    docs = field_docs(TrainConfig)
    group = parser.add_argument_group("config fields (also settable from --config FILE.yaml)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, dest=f"cfg_{f.name}", default=None, metavar=f.name.upper(),
                           help=f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%"))


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """Where and how a run executes: arguments of train(), not config."""
    group = parser.add_argument_group("where the run executes")
    group.add_argument("--device", default="auto", help="auto (CUDA when torch sees one), cpu or cuda")
    group.add_argument("--out", help="directory for checkpoint.pt and result.json (atomic; resumable)")
    group.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUT/tensorboard")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _config_from_args(args: argparse.Namespace) -> Any:
    from gs_tune.config import train_config

    values = _read_yaml_config(args.config) if args.config else {}
    values.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None})
    return train_config(values)


def cmd_train(args: argparse.Namespace) -> int:
    from gs_tune.trainer import train

    cfg = _config_from_args(args)
    records = train(cfg, device=args.device, out=args.out, progress=args.progress,
                    tensorboard=args.tensorboard, resume_from=args.resume)
    final: dict[str, Any] = {}
    for record in records:
        if record["kind"] == "val":
            print(
                f"iter {record['iteration']:>6}  train loss {record['train_loss']:.4f}  "
                f"val acc {record['val_accuracy']:.4f} ± {record['val_ci95']:.4f}  "
                f"{record['sec_per_iter'] * 1000:.1f} ms/it",
                file=sys.stderr if args.progress else sys.stdout,
            )
            final.update(record)
        elif record["kind"] == "diverged":
            print(f"diverged at iteration {record['iteration']}: non-finite training loss", file=sys.stderr)
            return 1
        else:
            final.update(record)
    if "test_accuracy" in final:
        print(
            f"test accuracy {final['test_accuracy'] * 100:.2f}% ± {final['test_ci95'] * 100:.2f}% "
            f"(95% t-interval over {cfg.test_tasks} test tasks, {cfg.ways}-way {cfg.shots}-shot {cfg.dataset}, "
            f"{cfg.algorithm}); {final['sec_per_iter'] * 1000:.1f} ms per meta-iteration"
        )
    if args.out:
        print(f"results: {Path(args.out) / 'result.json'}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from gs_tune.search.runner import launch

    launch(
        args.space, name=args.name, runs_dir=args.runs_dir, num_samples=args.num_samples,
        max_concurrent=args.max_concurrent, smoke=args.smoke, address=args.address,
        storage=args.storage, storage_optuna=args.storage_optuna, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, dashboard=args.dashboard, fix=_fixes(args.fix),
        trial_device=args.trial_device,
    )
    return 0


def _fixes(items: list[str]) -> dict[str, Any]:
    """--fix KEY=VALUE pairs; VALUE is read as YAML, so 0.1 is a number and maml a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("fix", f"expects KEY=VALUE (e.g. algorithm=maml), got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError("fix", f"cannot read the value of {item!r}") from None
    return out


def cmd_resume(args: argparse.Namespace) -> int:
    from gs_tune.search.runner import resume

    resume(args.run_dir, address=args.address)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from gs_tune.results.summary import summarize

    print(summarize(_run_dir(args.run_dir), top_k=args.top))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from gs_tune.results.report import write_report

    path = write_report(_run_dir(args.run_dir))
    print(f"report: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gs_tune.search.evaluate import evaluate_run

    baselines = [b for b in args.baselines.split(",") if b] if args.baselines else []
    evaluate_run(
        _run_dir(args.run_dir), baselines=baselines, seeds=args.seeds, tasks=args.tasks,
        baselines_runs=args.baselines_run, reference=None if args.reference == "none" else args.reference,
        smoke=args.smoke, address=args.address,
    )
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    import subprocess

    from gs_tune.results.tensorboard import start_tensorboard_command

    argv = start_tensorboard_command(_run_dir(args.run_dir))
    print(" ".join(argv))
    return subprocess.call(argv)


def _run_dir(path: str) -> Path:
    from gs_tune.errors import RunDirError

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunDirError(f"run_dir: {path} is not a directory; pass the directory `gs-tune launch` printed")
    return run_dir


def _add_launch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="start a hyperparameter search on Ray Tune with Optuna")
    p.add_argument("--space", required=True, help="search-space YAML: a path or a shipped name (cosine_l2)")
    p.add_argument("--name", help="run name (default: the space's name plus a timestamp)")
    p.add_argument("--runs-dir", default="runs", help="parent directory of run directories (default runs/)")
    p.add_argument("--num-samples", type=int, help="trials to run (overrides the space)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (overrides the space)")
    p.add_argument("--smoke", action="store_true", help="shrink every trial so the search takes about a minute")
    p.add_argument("--address", help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:10001")
    p.add_argument("--storage", help="Ray Tune storage path or URI for results (default: the run directory)")
    p.add_argument("--storage-optuna", help="Optuna storage URL, e.g. postgresql://… (default: RUN_DIR/study.db)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions share a GPU (0.25)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local cluster")
    p.add_argument("--trial-device", default="auto",
                   help="where trials compute: auto (the GPU share Ray assigns, else CPU), cpu or cuda; cpu "
                        "tries GPU placement on nodes that only declare GPUs")
    p.add_argument("--fix", action="append", default=[], metavar="KEY=VALUE",
                   help="pin a field of the space, searched or fixed (repeatable): --fix algorithm=maml")
    p.set_defaults(func=cmd_launch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gs-tune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train one configuration and evaluate it on the test split")
    p.add_argument("--config", help="YAML file of config fields; flags override it")
    p.add_argument("--resume", help="checkpoint file or directory to continue from")
    _add_runtime_flags(p)
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    _add_launch_parser(sub)

    p = sub.add_parser("resume", help="continue an interrupted search")
    p.add_argument("run_dir")
    p.add_argument("--address", help="join a running Ray cluster instead of starting a local one")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("results", help="top trials, counts by status and parameter importances")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=5, help="trials to show (default 5)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="write PNG plots and report.md into RUN_DIR/report")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="retrain the best configuration and baselines, score on the test split")
    p.add_argument("run_dir")
    p.add_argument("--baselines", default="maml,fomaml,reptile", help="comma-separated baselines")
    p.add_argument("--baselines-run", action="append", default=[],
                   help="run directory of a baselines search to take their configs from (repeat it to "
                        "pool one run per algorithm: the best trial per algorithm wins)")
    p.add_argument("--seeds", type=int, default=5, help="fresh seeds per method (default 5)")
    p.add_argument("--reference", default="fomaml", help="method the others are compared with, paired by seed "
                                                         "(default fomaml, its tuned config with --baselines-run; none)")
    p.add_argument("--tasks", type=int, default=600, help="test tasks per seed (default 600)")
    p.add_argument("--smoke", action="store_true", help="tiny budget, for checking the pipeline")
    p.add_argument("--address", help="join a running Ray cluster")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tensorboard", help="start TensorBoard on a run directory, bound to 127.0.0.1")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_tensorboard)
    register_data_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GsTuneError as exc:
        print(f"gs-tune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gs-tune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

