"""Command line: selftrain run | retrain | predict | config | plugins list|show | models list|show|promote|rollback | deploy-schema.

Run "selftrain COMMAND --help" for a command's options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from selftrain.cli_admin import cmd_deploy_schema, cmd_models
from selftrain.cli_run import execute, stage_log_lines, storage_error


from selftrain.prefect_env import EPHEMERAL_OFF_SERVICES, prefect_env as _prefect_env  # noqa: E402,F401


def cmd_run(args) -> int:
    _prefect_env()

    overrides = list(args.set or [])
    if args.output:
        overrides.append(f"output_dir={args.output}")
    # the data's obvious errors first: before load_config (whose plugin checks import torch) and any write
    from selftrain.core.data.preflight import check_run

    problem = check_run(args.config, overrides)
    if problem:
        print(f"selftrain: {problem}", file=sys.stderr)
        return 2
    from selftrain.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    def plain():
        from selftrain.core.run.pipeline import run_stages

        return run_stages(cfg)

    def flow():
        from selftrain.flows import pipeline

        return pipeline(cfg)

    result = execute(args.no_prefect, plain, flow)
    if isinstance(result, int):
        return result
    print()
    print(result["table"])
    print(f"\nfinal: {result['final']}   baseline: {result['baseline']}   run directory: {result['run_dir']}")
    for note in result.get("notes", []):
        print(f"note: {note}")
    return 0


def cmd_config(args) -> int:
    from selftrain.config import ConfigError, PipelineConfig, load_config

    if args.schema and args.show:
        print("selftrain: config: --show and --schema exclude each other. Fix: pass one of them", file=sys.stderr)
        return 2
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
    from selftrain.plugins.registry import all_plugins, allowlist_problems

    recs = all_plugins()
    problems = allowlist_problems()
    for line in problems:
        print(f"selftrain: warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.as_dict() for r in recs], indent=2))
        return 0
    group, width = None, max([12, *(len(r.name) for r in recs)])  # long third-party names keep the columns
    for r in recs:
        if r.group != group:
            group = r.group
            print(f"{group}:")
        status = "ok" if r.status == "ok" else f"{r.status}: {r.error}"
        summary = f"  - {r.cls.summary}" if r.cls is not None and r.cls.summary else ""
        print(f"  {r.name:<{width}} {r.dist} {r.version}  [{status}]{summary}")
    return 1 if args.strict and (problems or any(r.status == "error" for r in recs)) else 0


def cmd_plugins_show(args) -> int:
    from selftrain.plugins.registry import PluginError, describe, find, format_description

    try:
        recs = find(args.name, args.group)
    except PluginError as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    pages = [describe(r) for r in recs]
    if args.json:
        print(json.dumps(pages, indent=2, default=str))
    else:
        print("\n\n".join(format_description(d) for d in pages))
    return 0 if any(r.status == "ok" for r in recs) else 1  # only broken or disabled records: say so to scripts


def cmd_retrain(args) -> int:
    _prefect_env()
    from selftrain.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, list(args.set or []))
    except ConfigError as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    def plain():
        from selftrain.core.registry.retrain import run_retrain

        return run_retrain(cfg, force=args.force)

    def flow():
        from selftrain.flows import retrain

        return retrain(cfg, force=args.force)

    out = execute(args.no_prefect, plain, flow)
    if isinstance(out, int):
        return out
    print(f"{out['status']}: {out.get('reason', '')}")
    print(f"champion: {out.get('champion') or '-'}   registry: {out.get('registry')}   ({out['seconds']:.1f} s)")
    return 0


def cmd_predict(args) -> int:
    """Score a file with a run's model or a registry version; print the counts and the drift summary."""
    from selftrain.config import ConfigError
    from selftrain.core.predict.batch import PredictError, parse_columns

    kw = dict(run_dir=args.run, model=args.model, root=args.root, name=args.name, version=args.version,
              format=args.format, encoding=args.encoding, chunk_rows=args.chunk_rows, threshold=args.threshold,
              max_class_shift=args.max_class_shift, max_psi=args.max_psi, reference=not args.no_reference)
    sharded = bool(args.workers or args.dask_address)
    shard_kw = dict(shard_rows=args.shard_rows, workers=args.workers, threads_per_worker=args.threads_per_worker,
                    dask_address=args.dask_address, work_dir=args.work_dir)
    try:
        columns = parse_columns(args.column)
        if args.no_prefect:
            stage_log_lines()
            if sharded:  # the shards are scored one after the other in this process, as `run --no-prefect` does
                from selftrain.core.predict.shards import predict_sharded

                out = predict_sharded(args.input, args.output, columns=columns, **kw, **shard_kw)
            else:
                from selftrain.core.predict.batch import predict_file

                out = predict_file(args.input, args.output, columns=columns, **kw)
        else:
            # the flow's parameters are bounded (a deployment's server refuses a bad value); from here, say it
            # in this command's words first, before Prefect starts
            from selftrain.core.predict.checks import check_arguments

            check_arguments(args.output, args.chunk_rows, args.threshold, args.max_class_shift, args.max_psi)
            if sharded and (args.workers < 0 or args.shard_rows < 1 or args.threads_per_worker < 1):
                raise PredictError(f"--workers {args.workers}, --shard-rows {args.shard_rows}, --threads-per-worker "
                                   f"{args.threads_per_worker}: workers must be at least 0, the others at least 1")
            _prefect_env()
            from selftrain.flows import predict

            out = predict(args.input, args.output, columns=columns or None, **kw, **(shard_kw if sharded else {}))
    except (PredictError, ConfigError) as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    checks = ", ".join(f"{k} {v}" for k, v in out["quarantine_checks"].items())
    where = f"{out['output']}/ ({len(out['parts'])} parts)" if "parts" in out else out["output"]
    print(f"{out['rows']} rows: {out['predicted']} predicted -> {where}, {out['quarantined']} quarantined"
          + (f" ({checks}) -> {out['quarantine']}" if out["quarantined"] else ""))
    if "shards" in out:
        print(f"{out['shards']} shards: {out['shards_scored']} scored now, {out['shards_skipped']} already scored "
              "by an earlier attempt")
    print(f"model {out['model_version']} (fingerprint {out['model_fingerprint']}) at {out['model_uri']}"
          f"   ({out['seconds']:.1f} s)\n")
    print(out["markdown"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selftrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole pipeline (a Prefect flow)")
    r.add_argument("--config", "-c", help="YAML config (default: the built-in demo config)")
    r.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override, e.g. --set pretrain.epochs=2")
    r.add_argument("--output", "-o", help="run directory (local path or s3://bucket/prefix)")
    r.add_argument("--no-prefect", action="store_true", help="call the stage functions directly, without Prefect")
    r.set_defaults(func=cmd_run)

    rt = sub.add_parser("retrain", help="retrain if the data or config changed; promote the challenger only if it "
                        "beats the champion on the frozen evaluation set (the retrain flow)")
    rt.add_argument("--config", "-c", help="YAML config (default: the built-in demo config)")
    rt.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override, e.g. --set retrain.min_gain=0.01")
    rt.add_argument("--force", action="store_true", help="retrain even if nothing changed")
    rt.add_argument("--no-prefect", action="store_true", help="call the steps directly, without Prefect")
    rt.set_defaults(func=cmd_retrain)

    pr = sub.add_parser("predict", help="score a csv / jsonl / parquet file with a run's model or a registry "
                        "version: one parquet of predictions, a quarantine of bad rows, a drift summary")
    pr.add_argument("--input", "-i", required=True, help="csv / jsonl / parquet, local path or fsspec URI (s3://...)")
    pr.add_argument("--output", "-o", required=True, help="the predictions parquet (local path or s3://...); bad "
                    "rows go to <output stem>.quarantine.parquet (preds.parquet -> preds.quarantine.parquet)")
    pick = pr.add_mutually_exclusive_group(required=True)
    pick.add_argument("--run", help="a run directory: predict with its models/<--model> (default: its final model)")
    pick.add_argument("--root", help="a registry: retrain.artifacts_root (or the registry folder itself)")
    pr.add_argument("--model", help="with --run: the model name under models/ (default: metrics.json's final)")
    pr.add_argument("--name", help="with --root: retrain.model_name (default: selftrain)")
    pr.add_argument("--version", help="with --root: v0002, 2 or champion (default)")
    pr.add_argument("--column", action="append", metavar="NAME=COLUMN",
                    help="map an input column, e.g. --column text=body --column id=ticket_id (repeatable)")
    pr.add_argument("--format", default="auto", choices=["auto", "csv", "jsonl", "parquet"], help="default: from the extension")
    pr.add_argument("--encoding", default="utf-8", help="of a csv / jsonl input")
    pr.add_argument("--chunk-rows", type=int, default=8192, help="rows read and scored at once (the memory bound)")
    pr.add_argument("--threshold", type=float, default=0.5, help="confidence below which a row counts as low-confidence")
    pr.add_argument("--max-class-shift", type=float, default=0.25, help="class-mix distance above which drift is flagged")
    pr.add_argument("--max-psi", type=float, default=0.25, help="confidence PSI above which drift is flagged")
    pr.add_argument("--no-reference", action="store_true", help="do not score the model's test rows (no PSI)")
    pr.add_argument("--workers", type=int, default=0, metavar="N",
                    help="score in shards on N local Dask worker processes (execution.pool_workers); --output is then "
                    "a directory of parquet parts (with --no-prefect: the shards one after the other in this process)")
    pr.add_argument("--shard-rows", type=int, default=4096, help="valid input rows per shard (execution.pool_shard_rows)")
    pr.add_argument("--threads-per-worker", type=int, default=1, help="torch threads of each local Dask worker")
    pr.add_argument("--dask-address", help="tcp://host:8786 of a running Dask scheduler to score the shards on "
                    "(execution.dask_address; its workers need selftrain and access to the input, model and output)")
    pr.add_argument("--work-dir", help="where the shards wait until the output is published "
                    "(default: .<output name>.shards beside the output)")
    pr.add_argument("--no-prefect", action="store_true", help="call the function directly, without Prefect")
    pr.set_defaults(func=cmd_predict)

    c = sub.add_parser("config", help="print the resolved config (or its JSON schema)")
    c.add_argument("--config", "-c", help="YAML config (default: the built-in demo config)")
    c.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override, e.g. --set pretrain.epochs=2")
    c.add_argument("--show", action="store_true",
                   help="print the resolved config as YAML (the default; accepted for clarity in scripts)")
    c.add_argument("--schema", action="store_true", help="print the JSON schema with every field's help text")
    c.set_defaults(func=cmd_config)

    pl = sub.add_parser("plugins", help="installed plugins")
    psub = pl.add_subparsers(dest="plugins_command", required=True)
    ls = psub.add_parser("list", help="every plugin by group with its distribution, version and status")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--strict", action="store_true", help="exit 1 if any plugin is broken or an allowlist entry "
                    "allows nothing")
    ls.set_defaults(func=cmd_plugins)
    sh = psub.add_parser("show", help="one plugin: distribution, API version, summary and every option of its "
                         "Config (type, default, bounds, description)")
    sh.add_argument("name", help="the entry-point name, e.g. mlm, tiny-bert, threshold")
    sh.add_argument("--group", "-g", help="only this entry-point group, e.g. selftrain.objectives "
                    "(default: every group that has NAME)")
    sh.add_argument("--json", action="store_true", help="machine-readable output (a list: one record per group)")
    sh.set_defaults(func=cmd_plugins_show)

    m = sub.add_parser("models", help="the model registry of the retrain flow: list, show, promote, rollback")
    msub = m.add_subparsers(dest="models_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--root", help="retrain.artifacts_root (local path or s3://...), or the registry folder itself")
    where.add_argument("--name", help="retrain.model_name (default: the config's, 'selftrain')")
    where.add_argument("--config", "-c", help="take artifacts_root and model_name from this config's retrain section")
    where.add_argument("--set", "-s", action="append", metavar="KEY=VALUE")
    mls = msub.add_parser("list", parents=[where], help="every committed version, with the champion marked")
    mls.add_argument("--json", action="store_true", help="machine-readable output")
    msh = msub.add_parser("show", parents=[where], help="one version: its model card and where it is")
    msh.add_argument("version", nargs="?", default="champion", help="v0002, v2, 2 or champion (default)")
    msh.add_argument("--json", action="store_true", help="print version.json")
    mpr = msub.add_parser("promote", parents=[where], help="make VERSION the champion")
    mpr.add_argument("version")
    mpr.add_argument("--reason", help="recorded in champion.json's history")
    mrb = msub.add_parser("rollback", parents=[where], help="restore the champion before the current one")
    mrb.add_argument("--reason", help="recorded in champion.json's history")
    m.set_defaults(func=cmd_models)

    ds = sub.add_parser("deploy-schema", help="after `prefect deploy`: type the plugin options in the run forms "
                        "of the deployments (one form per installed plugin; bad values refused by the server)")
    ds.add_argument("--deployment", "-d", action="append", metavar="FLOW/NAME",
                    help="only this deployment (repeatable; default: every deployment whose flow takes a config)")
    ds.add_argument("--dry-run", action="store_true", help="say what would be typed, change nothing")
    ds.add_argument("--json", action="store_true", help="machine-readable output")
    ds.set_defaults(func=cmd_deploy_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `selftrain models list | head`: the reader is gone, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 0
    except Exception as exc:
        line = storage_error(exc)
        if line is None:
            raise
        values = [v for v in vars(args).values() if isinstance(v, str)]
        values += [x for v in vars(args).values() if isinstance(v, list) for x in v if isinstance(x, str)]
        uris = sorted({"s3://" + v.split("s3://", 1)[1] for v in values if "s3://" in v})  # also --set k=s3://...
        print(f"selftrain: {line}" + (f" (s3:// in this command: {', '.join(uris)})" if uris else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
