"""The commands that look after models rather than train them: ``selftrain models list|show|promote|
rollback`` (the registry) and ``selftrain deploy-schema`` (typed run forms on a Prefect server).
``selftrain.cli`` builds their parsers and dispatches to them."""

from __future__ import annotations

import json
import os
import sys


def _registry(args):
    """The registry named by --root/--name, else by the config's retrain.artifacts_root/model_name.
    ``--root`` may also be the registry folder itself (the one holding registry.json)."""
    from selftrain.config import RetrainConfig, load_config
    from selftrain.core.common import io
    from selftrain.core.registry.store import Registry

    root, name = args.root, args.name
    if root is None or args.config or args.set:
        rc = load_config(args.config, args.set or []).retrain
        root, name = root or rc.artifacts_root, name or rc.model_name
    if name is None and io.exists(io.join(root, "registry.json")):
        return Registry(root)
    name = name or RetrainConfig().model_name
    return Registry(io.join(root, name), name)


def _announce(reg, change: dict) -> None:
    """Emit the Prefect event of a champion change when a Prefect API is configured."""
    if not change.get("changed"):
        return
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    from prefect.events.worker import EventsWorker

    from selftrain.flows.retrain import emit_promoted

    info = reg.version_info(change["version"])
    emit_promoted({**change, "name": reg.name, "registry": reg.root, "model_uri": reg.model_uri(change["version"]),
                   "metrics": (info.get("frozen_eval") or {}).get("metrics")})
    EventsWorker.drain_all(timeout=30)


def cmd_models(args) -> int:
    from selftrain.config import ConfigError
    from selftrain.core.registry.model_card import registry_rows, rows_markdown
    from selftrain.core.registry.store import RegistryError

    try:
        reg = _registry(args)
        reg.info()  # a clear error when there is no registry there
        if args.models_command == "list":
            rows = registry_rows(reg)
            if args.json:
                print(json.dumps({"registry": reg.root, "champion": reg.champion(), "versions": rows}, indent=2))
            else:
                print(f"registry {reg.root}   champion: {reg.champion() or 'none'}\n")
                print(rows_markdown(rows))
        elif args.models_command == "show":
            v = reg.resolve(args.version)
            info = reg.version_info(v)
            if args.json:
                print(json.dumps({**info, "champion": v == reg.champion(), "uri": reg.version_uri(v)}, indent=2, default=str))
            else:
                champ = reg.champion()
                print(f"{v}: {'the champion' if v == champ else f'not the champion (champion: {champ})'}; {reg.version_uri(v)}\n")
                from selftrain.core.common import io

                print(io.read_bytes(io.join(reg.version_uri(v), "README.md")).decode())
        elif args.models_command == "promote":
            change = reg.promote(args.version, reason=args.reason or "selftrain models promote", by="cli")
            print(f"champion: {change['previous'] or 'none'} -> {change['version']}" if change["changed"]
                  else f"{change['version']} already is the champion: nothing changed")
            _announce(reg, change)
        else:
            change = reg.rollback(reason=args.reason or "selftrain models rollback", by="cli")
            print(f"champion: {change['previous']} -> {change['version']} (rolled back)")
            _announce(reg, change)
    except (RegistryError, ConfigError) as exc:
        print(f"selftrain: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_deploy_schema(args) -> int:
    """After `prefect deploy`: type each plugin's options in the deployments' run forms."""
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            print("selftrain: deploy-schema needs a Prefect server. Fix: export PREFECT_API_URL=http://<host>:4200/api",
                  file=sys.stderr)
            return 2
    import httpx

    from selftrain.flows.schema import apply_typed_schemas

    try:
        report = apply_typed_schemas(args.deployment or None, dry_run=args.dry_run)
    except LookupError as exc:  # an unknown deployment name
        print(f"selftrain: deploy-schema: {exc}", file=sys.stderr)
        return 2
    except (OSError, httpx.HTTPError) as exc:  # an unreachable server (a bug elsewhere keeps its traceback)
        from prefect.settings import PREFECT_API_URL

        print(f"selftrain: deploy-schema: {type(exc).__name__}: {exc} (PREFECT_API_URL={PREFECT_API_URL.value()}). "
              "Fix: start the server or point PREFECT_API_URL at it", file=sys.stderr)
        return 2
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=2))
    else:
        verb = "would type" if args.dry_run else "typed"
        for a in report.applied:
            print(f"{a.deployment}: {verb} " + "; ".join(f"{s} ({', '.join(n)})" for s, n in a.typed.items()))
            for u in a.untyped:
                print(f"  {u}: not installed here, its options stay untyped")
        for d in report.not_config:
            print(f"{d}: left as it is (its flow takes no selftrain config)")
        for s in report.skipped_plugins:
            print(f"skipped plugin {s}")
    if not report.applied:
        print("selftrain: deploy-schema: no deployment takes a selftrain config. Fix: run `prefect deploy "
              "--prefect-file deployments/prefect.yaml --all` first, against the same PREFECT_API_URL", file=sys.stderr)
        return 1
    return 0
