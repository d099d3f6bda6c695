"""The `convlearn` command: parses arguments and calls one library function per subcommand.

Exit codes: 0 ok, 2 bad input or config (one clear line on stderr), 1 internal error (traceback).
Each command imports what it needs when it runs (torch, transformers, lm-eval take seconds to import), so
`convlearn --help` and a bad argument answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .cli_live import add_live_commands
from .errors import UserError


def _cmd_tiny_model(args) -> int:
    from .tiny import build_tiny_model
    out = build_tiny_model(args.arch, args.out, seed=args.seed, vocab_size=args.vocab_size)
    print(f"tiny {args.arch} model written to {out}")
    return 0


def _cmd_config(args) -> int:
    from .config import config_docs, dump_config, load_config
    from .eval.evaluations import check_suites, evaluations_docs
    from .train.methods import method_for, methods_docs
    if args.action == "docs":
        sys.stdout.write(config_docs() + methods_docs() + evaluations_docs())
    else:
        cfg = load_config(args.config, args.set)
        method_for(cfg.method)
        check_suites(cfg.eval)
        sys.stdout.write(dump_config(cfg))
    return 0


def _cmd_data_inspect(args) -> int:
    from .data.inspect import format_stats, inspect_source
    stats = inspect_source(args.path, args.format, args.limit, args.split)
    print(json.dumps(stats.to_json(), ensure_ascii=False) if args.json else format_stats(stats, args.path))
    return 0


def _cmd_data_prepare(args) -> int:
    from .config import load_config
    from .data.prepare import prepare
    from .models import load_tokenizer, model_spec
    cfg = load_config(args.config, args.set, require=("model.name",))
    tok = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    prepared = prepare(cfg, tok, model_spec(cfg.model.name, cfg.model.revision), progress=not args.quiet)
    print(json.dumps({"path": str(prepared.path), **prepared.meta}, indent=2, ensure_ascii=False))
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .experiments.run import run_training
    from .train.loop import RunStopped
    cfg = load_config(args.config, args.set, require=("model.name",))
    try:
        summary = run_training(cfg, args.out, args.max_steps, args.resume)
    except RunStopped as e:
        print(f"convlearn: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_json(), indent=2))
    return 0


def _cmd_eval(args) -> int:
    from .experiments.evaluate import evaluate
    print(json.dumps(evaluate(args.target, args.suite, args.step, args.config, args.set, args.out), indent=2))
    return 0


def _cmd_export(args) -> int:
    from .experiments.export import export
    print(json.dumps(export(args.run, args.out, args.step, args.best, args.merge, args.dtype), indent=2))
    return 0


def _cmd_probes(args) -> int:
    from .data.probes import write_probes
    probes, conversations = write_probes(args.out, args.n, args.seed, args.mentions)
    print(f"{args.n} probes in {probes}; their training conversations (LMSYS schema) in {conversations}")
    return 0


def _cmd_sweep(args) -> int:
    from .experiments.report import write_report
    from .experiments.sweep import load_sweep, run_sweep
    result = run_sweep(args.experiment, args.out, args.gpus.split(",") if args.gpus else None, args.dry_run)
    if not args.dry_run:
        sweep = load_sweep(args.experiment)
        root = Path(result["root"])
        dirs = [root / r.name for r in sweep.runs if (root / r.name / "config.yaml").is_file()]
        summary = write_report(dirs, root / "report", sweep.experiment, sweep.name, sweep.hypothesis,
                               lr_choice=root / "lr_choice.json")
        result["report"] = summary["report"]
    print(json.dumps(result, indent=2))
    failed = [n for n, rc in result["runs"].items() if rc not in (0, "skipped")]
    return 1 if failed else 0


def _cmd_report(args) -> int:
    from .experiments.report import headline_table, write_report
    summary = write_report(args.runs, args.out, args.experiment, args.title or "", lr_choice=args.lr_choice)
    print(headline_table(summary, Path(args.out)))
    print(f"report: {summary['report']}")
    return 0


def _cmd_demo(args) -> int:
    default = args.out == "runs/demo"
    if args.live:
        from .demos.live import run_live
        run_live(("runs/live-real" if args.real else "runs/live") if default else args.out, quick=args.quick,
                 real=args.real)
        return 0
    if args.real:
        from .demos.real import run_real
        run_real("runs/real" if default else args.out, train_steps=2 if args.quick else 40, quick=args.quick)
        return 0
    from .demos.offline import run_demo
    run_demo(args.out, *((60, 30, 10) if args.quick else (400, 150, 40)), quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import FORMATS
    from .tiny import ARCHS
    p = argparse.ArgumentParser(prog="convlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the embedded default offline on CPU")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="shortened (CI): 60 pretraining + 30 training steps")
    demo.add_argument("--live", action="store_true", help="the serve -> learn loop instead: a server, simulated "
                                                          "users, learning rounds, gate, canaries (runs/live)")
    demo.add_argument("--real", action="store_true", help="on real weights: Gemma-3-270M from its GGUF (the real "
                                                          "extra; runs/real, or runs/live-real with --live)")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="continue training a model on a run config")
    train.add_argument("config", help="YAML run config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", default=None, help="run directory (default: output_dir of the config)")
    train.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="run an evaluation suite on a run's checkpoint or on any model")
    ev.add_argument("target", help="run directory (its config.yaml and checkpoints) or model id / folder")
    ev.add_argument("--suite", default="full", help="suite name from eval.suites (default full)")
    ev.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ev.add_argument("--config", default=None, help="run config (default: the run's, or defaults for a model)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--out", default=None, help="where evals/ go (default: the run directory)")
    ev.set_defaults(func=_cmd_eval)

    ex = sub.add_parser("export", help="a clean, self-contained model folder from a run's checkpoint")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--out", required=True, help="the folder to write (new or empty)")
    pick = ex.add_mutually_exclusive_group()
    pick.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest intact one)")
    pick.add_argument("--best", default=None, metavar="METRIC",
                      help="the checkpoint best by an evaluated figure, e.g. conversation_ppl/assistant (lower is "
                           "better for perplexities), among those whose retention stayed in bounds")
    ex.add_argument("--merge", action="store_true", help="LoRA: fold the adapter into the base weights")
    ex.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="cast the weights (default: as trained)")
    ex.set_defaults(func=_cmd_export)

    sw = sub.add_parser("sweep", help="run an experiment: a base config and a grid of overrides")
    sw.add_argument("experiment", help="sweep YAML (configs/experiments/*.yaml)")
    sw.add_argument("--out", default=None, help="root of the runs (default runs/<name>)")
    sw.add_argument("--gpus", default=None, help="comma-separated GPU ids to spread runs over")
    sw.add_argument("--dry-run", action="store_true", help="list runs and their state only")
    sw.set_defaults(func=_cmd_sweep)

    rep = sub.add_parser("report", help="tables, plots, CSV and verdicts from run directories")
    rep.add_argument("runs", nargs="+", help="run directories")
    rep.add_argument("--out", default="runs/report")
    rep.add_argument("--experiment", default="custom", help="optimizers | data_scaling | online | replay | custom "
                                                             "(whose hypothesis to judge)")
    rep.add_argument("--lr-choice", default=None, help="lr_choice.json of the sweep's learning-rate search")
    rep.add_argument("--title", default=None)
    rep.set_defaults(func=_cmd_report)

    add_live_commands(sub)

    tiny = sub.add_parser("tiny-model", help="build a tiny offline twin of a seed architecture")
    tiny.add_argument("--arch", required=True, choices=ARCHS)
    tiny.add_argument("--out", required=True, help="directory to write the HF model folder to")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--vocab-size", type=int, default=4096)
    tiny.set_defaults(func=_cmd_tiny_model)

    cfg = sub.add_parser("config", help="show config reference (docs) or a resolved config (show)")
    cfg.add_argument("action", choices=["docs", "show"])
    cfg.add_argument("config", nargs="?", help="YAML run config (for show)")
    cfg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cfg.set_defaults(func=_cmd_config)

    data = sub.add_parser("data", help="inspect or prepare conversation data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    insp = dsub.add_parser("inspect", help="read a file or dataset and print what was kept and skipped")
    insp.add_argument("path", help="file, chatterbot folder/`chatterbot`, dataset folder or hub id")
    insp.add_argument("--format", default="auto", choices=FORMATS)
    insp.add_argument("--limit", type=int, default=None, help="read at most this many raw rows")
    insp.add_argument("--split", default="train", help="split of a hub dataset")
    insp.add_argument("--json", action="store_true", help="one JSON object instead of text")
    insp.set_defaults(func=_cmd_data_inspect)
    prep = dsub.add_parser("prepare", help="render and tokenize a run's data once and cache it")
    prep.add_argument("config", help="YAML run config")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_data_prepare)
    probes = dsub.add_parser("probes", help="write knowledge probes and the conversations that teach them")
    probes.add_argument("--out", required=True)
    probes.add_argument("--n", type=int, default=20, help="number of invented facts")
    probes.add_argument("--mentions", type=int, default=4, help="training conversations per fact")
    probes.add_argument("--seed", type=int, default=0)
    probes.set_defaults(func=_cmd_probes)
    return p


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (tests redirect it per call)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


# The long-running commands log (convlearn.serve, convlearn.learn) with levels; the others print their output.
LOGGING_COMMANDS = {"serve", "learn", "demo"}
# Commands that write conversations (the store, round files, exports, model folders trained on them): what they
# create is owner-only (files 0600, folders 0700), whatever the shell's umask.
PRIVATE_COMMANDS = {"serve", "learn", "keys", "store", "versions", "rollback", "demo"}


def _log_to_stderr() -> None:
    logger = logging.getLogger("convlearn")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in LOGGING_COMMANDS:
        _log_to_stderr()
    if args.command in PRIVATE_COMMANDS:
        os.umask(0o077)
    try:
        return args.func(args)
    except UserError as e:
        print(f"convlearn: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or unwritable place: one line naming the path and the cause
        if e.errno is None:
            raise
        import errno
        where = f"{e.filename}: " if e.filename else ""
        hint = ("; the checkpoints written before are intact: fix it and `--resume` continues exactly"
                if args.command == "train" else "")
        print(f"convlearn: error: {where}{e.strerror} ({errno.errorcode.get(e.errno, e.errno)}){hint}",
              file=sys.stderr)
        return 2 if e.errno in (errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
                                errno.EPERM, errno.ENOENT) else 1
    except KeyboardInterrupt:
        print("convlearn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
