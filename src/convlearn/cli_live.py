"""The live loop's commands (serve, learn, versions, rollback, keys, store): their arguments and the one library
call each makes. cli.py adds them to the `convlearn` command; heavy imports wait until a command runs."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError


def _cmd_learn(args) -> int:
    from .learn.learner import learn, learn_config
    return learn(learn_config(args.config, args.set), once=args.once, rounds=args.rounds)


def _cmd_versions(args) -> int:
    from .learn.versions import trained_on_table, versions_table
    from .store import ServeDir, open_store
    store = open_store(args.dir, args.store)
    if args.trained_on:
        print(trained_on_table(store, ServeDir(args.dir or "convlearn-live"), args.trained_on))
    else:
        print(versions_table(store))
    return 0


def _cmd_rollback(args) -> int:
    from .learn.versions import rollback
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
                    queue=args.queue, queue_timeout_s=args.queue_timeout, rate_per_minute=args.rate_limit,
                    retry_window_s=args.retry_window)
    serve(args.model, args.dir, args.store, limits, args.device, args.poll, args.host, args.port, args.precision)
    return 0


def _cmd_keys(args) -> int:
    from .store import open_store
    store = open_store(args.dir, args.store)
    if args.keys_command == "add":
        secret = store.add_key(args.name, args.consent_default, args.admin)
        print(secret)
        print(f"{'admin ' if args.admin else ''}key {args.name!r} added (consent default "
              f"{'on' if args.consent_default else 'off'}); it is shown only now, the store keeps its hash",
              file=sys.stderr)
    elif args.keys_command == "revoke":
        if not store.revoke_key(args.name):
            raise UserError(f"no key named {args.name!r} (convlearn keys list)")
        print(f"key {args.name!r} revoked: its requests get 401 from now on; its conversations stay, and their "
              f"owner can no longer reach them with it", file=sys.stderr)
    else:
        for k in store.list_keys():
            print(f"{k['name']}\t{k['prefix']}...\tconsent default {'on' if k['consent_default'] else 'off'}"
                  f"{chr(9) + 'admin' if k['admin'] else ''}{chr(9) + 'revoked' if k['revoked'] else ''}")
    return 0


def _cmd_store(args) -> int:
    from .store import open_store
    store = open_store(args.dir, args.store)
    if args.store_command == "export":
        from collections import Counter

        from .data.hygiene import scrub_text
        from .store import export_conversations
        scrubbed: Counter = Counter()
        n = export_conversations(store, args.out, args.format,
                                 None if args.raw else (lambda t: scrub_text(t, scrubbed)))
        what = "raw text, nothing scrubbed" if args.raw else \
            f"scrubbed: {', '.join(f'{k} {v}' for k, v in sorted(scrubbed.items())) or 'nothing found'}"
        print(f"{n} consented conversations written to {args.out} ({args.format}; {what}; owner-only)")
    else:
        print(json.dumps({**store.counts(), "integrity": store.integrity_check(),
                          "current_version": store.current_id()}, indent=1))
    return 0


def _store_args(parser) -> None:
    parser.add_argument("--dir", default=None, help="serve directory whose store.sqlite to use (default "
                                                    "./convlearn-live)")
    parser.add_argument("--store", default=None, help="a SQLAlchemy database URL instead (e.g. postgresql://...)")


def add_live_commands(sub) -> None:
    """The live loop's subcommands on `convlearn`'s subparsers."""
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
    srv.add_argument("--rate-limit", type=int, default=120, help="requests per key per minute, across every server "
                                                                 "on the store (429 above)")
    srv.add_argument("--retry-window", type=float, default=600.0,
                     help="seconds in which the same request (key + history) again is a retry: it replaces the reply "
                          "it repeats instead of storing the conversation twice (0: only requests the client marks "
                          "as retries)")
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
    ver.add_argument("--trained-on", default=None, metavar="CONVERSATION_ID",
                     help="list the versions whose training read this conversation, directly or through their "
                          "parent (deletion does not retrain a promoted version: this says which hold it)")
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
    kadd.add_argument("--admin", action="store_true", help="may see store-wide figures (/v1/status, /v1/versions' "
                                                           "gate figures); other keys see only their own")
    _store_args(kadd)
    krev = ksub.add_parser("revoke", help="revoke a key: its requests get 401 (its conversations stay)")
    krev.add_argument("name")
    _store_args(krev)
    klist = ksub.add_parser("list", help="key names and prefixes")
    _store_args(klist)
    keys.set_defaults(func=_cmd_keys)

    st = sub.add_parser("store", help="the conversation store: export consented conversations, or counts")
    ssub = st.add_subparsers(dest="store_command", required=True)
    sexp = ssub.add_parser("export", help="consented conversations as JSON lines our readers ingest")
    sexp.add_argument("out")
    sexp.add_argument("--format", choices=["lmsys", "sharegpt"], default="lmsys")
    sexp.add_argument("--raw", action="store_true", help="the text as stored; by default e-mail addresses, phone "
                                                         "numbers, keys/tokens and IP addresses are replaced "
                                                         "(the training scrubber)")
    _store_args(sexp)
    sinfo = ssub.add_parser("info", help="counts, integrity check and the current version")
    _store_args(sinfo)
    st.set_defaults(func=_cmd_store)
