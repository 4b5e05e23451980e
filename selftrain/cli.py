"""Command line: ``selftrain run | config | plugins list``."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _prefect_env() -> None:
    """Settings that must be in place before prefect is imported."""
    # the ephemeral API takes 10-20 s to start on small machines; 20 s is too tight
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "selftrain")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def cmd_run(args) -> int:
    _prefect_env()
    from selftrain.config import ConfigError, load_config

    overrides = list(args.set or [])
    if args.output:
        overrides.append(f"output_dir={args.output}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    if args.no_prefect:
        from selftrain.core.pipeline import run_stages

        result = run_stages(cfg)
    else:
        from selftrain.flows import pipeline

        result = pipeline(cfg)
    print()
    print(result["table"])
    print(f"\nfinal: {result['final']}   baseline: {result['baseline']}   run directory: {result['run_dir']}")
    for note in result.get("notes", []):
        print(f"note: {note}")
    return 0


def cmd_config(args) -> int:
    from selftrain.config import ConfigError, PipelineConfig, load_config

    if args.schema:
        print(json.dumps(PipelineConfig.model_json_schema(by_alias=True), indent=2))
        return 0
    try:
        cfg = load_config(args.config, args.set or [])
    except ConfigError as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    import yaml

    print(yaml.safe_dump(cfg.dump(), sort_keys=False), end="")
    return 0


def cmd_plugins(args) -> int:
    from selftrain.plugins.registry import all_plugins

    recs = all_plugins()
    if args.json:
        print(json.dumps([r.as_dict() for r in recs], indent=2))
        return 0
    group = None
    for r in recs:
        if r.group != group:
            group = r.group
            print(f"{group}:")
        status = "ok" if r.status == "ok" else f"{r.status}: {r.error}"
        summary = f"  - {r.cls.summary}" if r.cls is not None and r.cls.summary else ""
        print(f"  {r.name:<12} {r.dist} {r.version}  [{status}]{summary}")
    return 1 if args.strict and any(r.status == "error" for r in recs) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selftrain", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole pipeline (a Prefect flow)")
    r.add_argument("--config", "-c", help="YAML config (default: the built-in demo config)")
    r.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override, e.g. --set pretrain.epochs=2")
    r.add_argument("--output", "-o", help="run directory (local path or s3://bucket/prefix)")
    r.add_argument("--no-prefect", action="store_true", help="call the stage functions directly, without Prefect")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="print the resolved config (or its JSON schema)")
    c.add_argument("--config", "-c")
    c.add_argument("--set", "-s", action="append", metavar="KEY=VALUE")
    c.add_argument("--schema", action="store_true", help="print the JSON schema with every field's help text")
    c.set_defaults(func=cmd_config)

    pl = sub.add_parser("plugins", help="installed plugins")
    psub = pl.add_subparsers(dest="plugins_command", required=True)
    ls = psub.add_parser("list", help="every plugin by group with its distribution, version and status")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--strict", action="store_true", help="exit 1 if any plugin is broken")
    ls.set_defaults(func=cmd_plugins)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
