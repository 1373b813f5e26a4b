"""`mmpref run PARAMS`, `mmpref status PARAMS`, `mmpref check PARAMS`, `mmpref figures PARAMS --to DIR`, `mmpref train`,
`mmpref seeds PARAMS --seeds 0,1,2`."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from mmpref import __version__, methods
from mmpref.config import ParamsError, deep_merge, dotted_to_nested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmpref", description="Multi-modal preference alignment, stage by stage.")
    parser.add_argument("--version", action="version", version=f"mmpref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the stage notebooks with papermill (complete stages are skipped)")
    p_run.add_argument("params", help="params YAML, e.g. params/tiny.yaml")
    p_run.add_argument("--stages", help="a stage range such as 02-04, 04- (to the end) or -04 (from the start), or a list such as 05,08 "
                            "(default: all)")
    p_run.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run STAGE even if complete")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override a param, e.g. --set train.dpo.epochs=1 (repeatable)")
    p_run.add_argument("--judge-runs", type=int, metavar="N",
                       help="grade every judge-graded benchmark N times and report mean and standard deviation "
                            "(the same as --set evaluate.judge_runs=N)")
    p_run.add_argument("--retry-failed", action="store_true",
                       help="re-ask exactly the judge items recorded as failed (gold answers, annotations, gradings)")
    p_seeds = sub.add_parser("seeds", help="run the params under several seeds (one run each) and tabulate the spread "
                                           "of the headline numbers and claims (mmpref.seeds)")
    p_seeds.add_argument("params")
    p_seeds.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default 0,1,2)")
    p_seeds.add_argument("--stages", help="as for run (default: all)")
    p_seeds.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p_train = sub.add_parser("train", help="train one method from a run's datasets, or the critique reward model "
                                           "(reward_model) from its annotations (e.g. under accelerate launch)")
    p_train.add_argument("params")
    p_train.add_argument("method", choices=[*methods.names(), "reward_model"])
    p_train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p_status = sub.add_parser("status", help="show which stages of a run are complete")
    p_status.add_argument("params")
    p_status.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p_check = sub.add_parser("check", help="before a run: missing or malformed data, the environment, judge cost")
    p_check.add_argument("params")
    p_check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p_fig = sub.add_parser("figures", help="copy a run's figures (PNG and PDF) into a folder, e.g. --to figures/")
    p_fig.add_argument("params")
    p_fig.add_argument("--to", required=True, help="the folder to copy into")
    p_fig.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    args = parser.parse_args(argv)

    from mmpref import runner

    try:
        overrides = dotted_to_nested(args.overrides)
        if getattr(args, "judge_runs", None) is not None:
            overrides = deep_merge(overrides, {"evaluate": {"judge_runs": args.judge_runs}})
        if args.command == "run":
            report = runner.run(args.params, stages=args.stages, force=args.force, overrides=overrides,
                                retry_failed=args.retry_failed)
            print(runner.summary_table(report))
            print(f"total {sum(r['seconds'] for r in report):.1f}s")
        elif args.command == "seeds":
            from mmpref.seeds import run_seeds

            try:
                seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            except ValueError:
                raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
            done = run_seeds(args.params, seeds, overrides=overrides, stages=args.stages)
            print(done["spread"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"tables in {done['dir']}")
        elif args.command == "train":
            from mmpref.config import load_params
            from mmpref.console import setup_logging
            from mmpref.train import REWARD_MODEL, train_method, train_reward_model

            setup_logging()
            params = load_params(args.params, overrides)
            infos = ({REWARD_MODEL: train_reward_model(params)} if args.method == REWARD_MODEL else
                     train_method(params, args.method))
            for name, info in infos.items():
                print(f"{name}: {info['rows']} rows, {info['seconds']}s, final loss {info['final_loss']}")
        elif args.command == "check":
            from mmpref.config import load_params
            from mmpref.preflight import report

            text, missing = report(load_params(args.params, overrides))
            print(text)
            if missing:
                return 1
        elif args.command == "figures":
            from mmpref.analysis import copy_figures
            from mmpref.config import load_params

            params = load_params(args.params, overrides)
            for path in copy_figures(params.run_dir, Path(args.to)):
                print(path)
        else:
            print(runner.summary_table(runner.status(args.params, overrides)))
    except (ParamsError, ValueError) as exc:
        print(f"mmpref: error: {exc}", file=sys.stderr)
        return 2
    except runner.MissingInput as exc:
        print(f"mmpref: {exc}", file=sys.stderr)
        return 1
    except runner.RunLocked as exc:
        print(f"mmpref: {exc}", file=sys.stderr)
        return 3
    except runner.StageFailed as exc:
        print(f"mmpref: {exc}", file=sys.stderr)
        return 1
    except runner.Interrupted as exc:  # Ctrl-C or SIGTERM in `mmpref run`: one line (kernel down, lock released)
        print(f"mmpref: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C anywhere else
        print(f"mmpref: {runner.Interrupted('Ctrl-C')}", file=sys.stderr)
        return runner.Interrupted("Ctrl-C").exit_code
    except OSError as exc:  # a full disk, a folder it may not write: one line, not a traceback
        print(f"mmpref: {os_error_line(exc, args.command)}", file=sys.stderr)
        return 1
    return 0


def os_error_line(exc: OSError, command: str) -> str:
    """What went wrong with which file, and what to do: a full disk (finished work is kept: files are written whole
    or appended row by row, mmpref.io) or a folder that cannot be written."""
    what, path = exc.strerror or str(exc), exc.filename
    if path is None:
        return f"{what}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write {path} ({what}); free some space (or copy the run to a disk with room and name it with "
                f"--set run.run_dir=DIR), then run the same command again: finished work is kept")
    if command in ("run", "train", "figures") and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS,
                                                                 errno.ENOTDIR, errno.EISDIR):
        where = "--to DIR" if command == "figures" else "--set run.run_dir=DIR or MMPREF_RUN_DIR=DIR"
        return f"cannot write {path} ({what}); choose a folder you can write ({where})"
    return f"{path}: {what}"


if __name__ == "__main__":
    sys.exit(main())
