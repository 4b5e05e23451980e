"""Apply typed plugin options to the deployments on a Prefect server (``selftrain deploy-schema``).

``prefect deploy`` stores each deployment's parameter schema as Prefect derives it from the
flow's signature, where a plugin's ``options`` is a free-form dict. This step replaces the
schema of every deployment whose flow takes a ``PipelineConfig`` with the typed one of
:func:`selftrain.core.run.deploy_schema.typed_parameter_schema`, built from the plugins
installed in this environment, and turns ``enforce_parameter_schema`` on, so the server
refuses a flow run with a bad option value (HTTP 409) before any work. Run it after every
``prefect deploy`` (which writes the untyped schema again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selftrain.core.run.deploy_schema import TypedSchema, chosen_plugins, typed_parameter_schema


@dataclass
class Applied:
    deployment: str  # flow/deployment
    id: str
    typed: dict[str, list[str]] = field(default_factory=dict)
    untyped: list[str] = field(default_factory=list)


@dataclass
class Report:
    applied: list[Applied] = field(default_factory=list)
    skipped_plugins: list[str] = field(default_factory=list)
    not_config: list[str] = field(default_factory=list)  # deployments whose flow takes no PipelineConfig
    dry_run: bool = False


def apply_typed_schemas(names: list[str] | None = None, dry_run: bool = False) -> Report:
    """Type the run forms of ``names`` ("flow/deployment"; default: every deployment of the
    server at PREFECT_API_URL whose flow takes a selftrain config)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    report = Report(dry_run=dry_run)
    with get_client(sync_client=True) as client:
        if names:
            deployments = []
            for n in names:
                try:
                    deployments.append(client.read_deployment_by_name(n))
                except ObjectNotFound:
                    raise LookupError(f"no deployment {n!r} on {client.api_url}. Fix: one of `prefect deployment ls` "
                                      "(FLOW/NAME), or deploy it first") from None
        else:
            deployments, offset = [], 0
            while batch := client.read_deployments(limit=200, offset=offset):
                deployments += batch
                offset += len(batch)
        flow_names: dict = {}
        for d in deployments:
            if d.flow_id not in flow_names:
                flow_names[d.flow_id] = client.read_flow(d.flow_id).name
            label = f"{flow_names[d.flow_id]}/{d.name}"
            typed: TypedSchema | None = typed_parameter_schema(d.parameter_openapi_schema or {},
                                                               chosen_plugins(d.parameters))
            if typed is None:
                report.not_config.append(label)
                continue
            report.skipped_plugins = sorted(set(report.skipped_plugins) | set(typed.skipped))
            if not dry_run:
                client.update_deployment(d.id, DeploymentUpdate(parameter_openapi_schema=typed.schema,
                                                                enforce_parameter_schema=True))
            report.applied.append(Applied(label, str(d.id), typed.typed, typed.untyped))
    return report
