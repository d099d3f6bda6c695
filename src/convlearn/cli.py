"""The `convlearn` command: parses arguments and calls one library function per subcommand.

Exit codes: 0 ok, 2 bad input or config (one clear line on stderr), 1 internal error (traceback).
Each command imports what it needs when it runs (torch, transformers, lm-eval take seconds to import), so
`convlearn --help` and a bad argument answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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


def _cmd_learn(args) -> int:
    from .learn.learner import learn, learn_config
    return learn(learn_config(args.config, args.set), once=args.once, rounds=args.rounds)


def _cmd_versions(args) -> int:
    from .learn.learner import versions_table
    from .store import open_store
    print(versions_table(open_store(args.dir, args.store)))
    return 0


def _cmd_rollback(args) -> int:
    from .learn.learner import rollback
    from .store import open_store
    moved = rollback(open_store(args.dir, args.store), args.version)
    print(f"current version: {moved['from']} -> {moved['to']} (a running server swaps to it between requests)")
    return 0


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "yes", "1"):
        return True
    if value.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"on or off; got {value!r}")


def _cmd_serve(args) -> int:
    from .serve.api import Limits
    from .serve.server import serve
    limits = Limits(max_body_bytes=args.max_body, max_tokens=args.max_tokens, concurrency=args.concurrency,
                    queue=args.queue, queue_timeout_s=args.queue_timeout, rate_per_minute=args.rate_limit)
    serve(args.model, args.dir, args.store, limits, args.device, args.poll, args.host, args.port, args.precision)
    return 0


def _cmd_keys(args) -> int:
    from .store import open_store
    store = open_store(args.dir, args.store)
    if args.keys_command == "add":
        secret = store.add_key(args.name, args.consent_default)
        print(secret)
        print(f"key {args.name!r} added (consent default {'on' if args.consent_default else 'off'}); it is shown "
              f"only now, the store keeps its hash", file=sys.stderr)
    else:
        for k in store.list_keys():
            print(f"{k['name']}\t{k['prefix']}...\tconsent default {'on' if k['consent_default'] else 'off'}")
    return 0


def _cmd_store(args) -> int:
    from .store import open_store
    store = open_store(args.dir, args.store)
    if args.store_command == "export":
        n = store.export(args.out, args.format)
        print(f"{n} consented conversations written to {args.out} ({args.format})")
    else:
        print(json.dumps({**store.counts(), "integrity": store.integrity_check(),
                          "current_version": store.current_id()}, indent=1))
    return 0


def _store_args(parser) -> None:
    parser.add_argument("--dir", default=None, help="serve directory whose store.sqlite to use (default "
                                                    "./convlearn-live)")
    parser.add_argument("--store", default=None, help="a SQLAlchemy database URL instead (e.g. postgresql://...)")


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

    srv = sub.add_parser("serve", help="an OpenAI-compatible chat server that stores consented conversations")
    srv.add_argument("model", help="hub id, model folder, training run (its final model) or serve/learner directory")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    _store_args(srv)
    srv.add_argument("--device", default="auto", help="auto | cpu | cuda")
    srv.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16-mixed", "bf16"],
                     help="as train.precision: auto = fp32 on CPU, bf16-mixed on a GPU (fp32 weights, bf16 compute)")
    srv.add_argument("--concurrency", type=int, default=2, help="generations at once (default 2)")
    srv.add_argument("--queue", type=int, default=8, help="requests that may wait for a slot; more get 503 (default 8)")
    srv.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a request may wait (then 503)")
    srv.add_argument("--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for")
    srv.add_argument("--max-body", type=int, default=1_000_000, help="request body limit in bytes (413 above)")
    srv.add_argument("--rate-limit", type=int, default=120, help="requests per key per minute (429 above)")
    srv.add_argument("--poll", type=float, default=2.0, help="seconds between checks for a newly current version")
    srv.set_defaults(func=_cmd_serve)

    lrn = sub.add_parser("learn", help="learn in rounds from the store's consented conversations, beside serve")
    lrn.add_argument("config", help="YAML run config with a `learn` section (its learn.dir is the serve directory)")
    lrn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    lrn.add_argument("--once", action="store_true", help="one round now if anything waits (or finish an "
                                                          "interrupted one), then exit")
    lrn.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (default: run on)")
    lrn.set_defaults(func=_cmd_learn)

    ver = sub.add_parser("versions", help="the model versions of a serve directory: promoted, rejected and why")
    ver.add_argument("dir", nargs="?", default=None, help="serve directory (default ./convlearn-live)")
    ver.add_argument("--store", default=None, help="a SQLAlchemy database URL instead")
    ver.set_defaults(func=_cmd_versions)

    rb = sub.add_parser("rollback", help="make an older version current (the server swaps to it)")
    rb.add_argument("dir", help="serve directory")
    rb.add_argument("version", help="version id, e.g. v0")
    rb.add_argument("--store", default=None, help="a SQLAlchemy database URL instead")
    rb.set_defaults(func=_cmd_rollback)

    keys = sub.add_parser("keys", help="API keys of a serve directory's store")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kadd = ksub.add_parser("add", help="make a key and print it (once)")
    kadd.add_argument("name")
    kadd.add_argument("--consent-default", type=_on_off, default=False, metavar="on|off",
                      help="whether this key's conversations may be learned from when a request does not say "
                           "(default off)")
    _store_args(kadd)
    klist = ksub.add_parser("list", help="key names and prefixes")
    _store_args(klist)
    keys.set_defaults(func=_cmd_keys)

    st = sub.add_parser("store", help="the conversation store: export consented conversations, or counts")
    ssub = st.add_subparsers(dest="store_command", required=True)
    sexp = ssub.add_parser("export", help="consented conversations as JSON lines our readers ingest")
    sexp.add_argument("out")
    sexp.add_argument("--format", choices=["lmsys", "sharegpt"], default="lmsys")
    _store_args(sexp)
    sinfo = ssub.add_parser("info", help="counts, integrity check and the current version")
    _store_args(sinfo)
    st.set_defaults(func=_cmd_store)

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
