"""Typed plugin options in a deployment's parameter schema: the Prefect UI's run form.

``PipelineConfig`` keeps each plugin's options as a free-form ``options: dict`` (the plugin is
chosen at run time, so its ``Config`` cannot be a static type). From that, Prefect derives a
parameter schema in which ``options`` is a JSON box. :func:`typed_parameter_schema` rewrites
such a schema from the plugins *installed here*: each plugin section (``model``,
``classifier``, ``pretrain``, ``pseudo_label``) becomes an ``anyOf`` of one variant per
plugin, keyed by the section's plugin-name field (``discriminator``): the variant of the
labeler ``threshold`` is the ``pseudo_label`` section with ``labeler`` fixed to
``"threshold"`` (``const``) and ``options`` typed as ``ThresholdConfig`` (fields, defaults,
bounds and help texts). The Prefect UI renders an ``anyOf`` as one button per variant
(titled with the plugin name) over that variant's form; the server validates a new flow
run's parameters against the schema (``enforce_parameter_schema``), so a bad option value
is refused with HTTP 409 before any work.

Layout: ``anyOf: [{"$ref": "#/definitions/PseudoLabelConfig.threshold"}, ...]`` where that
definition is ``{"title": "threshold", "$ref": "#/definitions/PseudoLabelConfig.threshold.fields"}``
and ``.fields`` holds the section's properties. The second hop is for the Prefect UI, which
picks the variant it shows by matching the value's keys against each (once dereferenced)
variant's ``properties``: every plugin variant of a section has the same keys, so with the
fields one hop away the match is empty for all of them and the UI keeps the variant the
user clicked (else it falls back to the first). JSON schema validation follows both hops.

The data's shape is unchanged: a flow run still receives the same ``config`` dict, which
the flow validates as ``PipelineConfig`` (plugin checks included). What JSON schema cannot
express (a plugin's cross-field validators) is still caught there, at run start.

Prefect-free: it reads and returns plain dicts. ``selftrain.flows.schema`` applies it to a
server's deployments (``selftrain deploy-schema``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from selftrain.config import PipelineConfig
from selftrain.plugins.registry import CONFIG_KEYS, discover

#: (section, plugin-name key, entry-point group), from the registry's ``CONFIG_KEYS``.
SECTIONS: tuple[tuple[str, str, str], ...] = tuple(
    (*CONFIG_KEYS[g].split("."), g) for g in ("selftrain.models", "selftrain.classifiers",
                                             "selftrain.objectives", "selftrain.labelers")
)
CONFIG_DEF = PipelineConfig.__name__  # the definition Prefect names after the flow's parameter type


@dataclass
class TypedSchema:
    schema: dict
    #: section -> plugin names offered, in form order (the first is the one the form opens on).
    typed: dict[str, list[str]] = field(default_factory=dict)
    #: "group name (dist version): why" of each plugin left out (broken, disabled, name clash).
    skipped: list[str] = field(default_factory=list)
    #: "section.key=name" kept as an untyped variant: named by the deployment but not installed here.
    untyped: list[str] = field(default_factory=list)


def _default_name(section: str, key: str) -> str:
    return PipelineConfig.model_fields[section].annotation.model_fields[key].default


def _hoist(options_schema: dict, prefix: str, definitions: dict) -> dict:
    """Move a plugin Config's own ``$defs`` into the shared ``definitions`` under ``prefix``."""
    for name, sub in options_schema.pop("$defs", {}).items():
        definitions[prefix + name] = sub
    return options_schema


def _options_schema(cls: type, group: str, name: str, definitions: dict) -> dict:
    prefix = f"{group}.{name}."
    return _hoist(cls.Config.model_json_schema(ref_template=f"#/definitions/{prefix}{{model}}"), prefix, definitions)


def _kind(section: str, key: str) -> str:
    """What the section's plugin is called: model, classifier, objective, labeler."""
    return section if key == "name" else key


def _variant(base: dict, kind: str, key: str, name: str, options: dict, required: bool, summary: str) -> dict:
    props = copy.deepcopy(base["properties"])
    name_prop = props.get(key, {})
    props[key] = {"title": name_prop.get("title", key), "description": name_prop.get("description", ""),
                  "type": "string", "const": name, "default": name}
    opt = props.get("options", {})
    props["options"] = {k: v for k, v in options.items() if k not in ("title", "description")} | {
        "title": opt.get("title", "Options"),
        "description": f"Options of the {kind} {name!r}" + (f": {summary}" if summary else "."),
    }
    variant = {k: v for k, v in base.items() if k not in ("properties", "required", "title", "description")}
    variant |= {"title": name, "description": summary or f"{key}: {name}", "type": "object", "properties": props}
    if required:
        variant["required"] = [key]
    return variant


def _record_label(rec) -> str:
    return f"{rec.group} {rec.name} ({rec.dist} {rec.version}): {rec.error}"


def chosen_plugins(parameters: dict | None) -> dict[str, str]:
    """{section: plugin name} named by a deployment's default ``config`` parameter."""
    cfg = (parameters or {}).get("config") or {}
    out = {}
    for section, key, _ in SECTIONS:
        sec = cfg.get(section) if isinstance(cfg, dict) else None
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            out[section] = sec[key]
    return out


def _def_names(section_def: str, name: str) -> tuple[str, str]:
    """(variant, fields) definition names of plugin ``name`` in the section defined by ``section_def``."""
    return f"{section_def}.{name}", f"{section_def}.{name}.fields"


def typed_parameter_schema(schema: dict, chosen: dict[str, str] | None = None) -> TypedSchema | None:
    """``schema`` (a flow's parameter schema as Prefect stores it) with every plugin section's
    options typed by the installed plugins; None if no parameter of the flow is a ``PipelineConfig``.

    ``chosen``: {section: plugin name} the form opens on (the deployment's own config; default:
    PipelineConfig's defaults). A variant whose name is PipelineConfig's default does not
    require the name key (a partial section means that plugin, as for the flow); every
    other variant does. A chosen name that is not installed here stays offered, untyped, so
    the deployment's own parameters stay valid. Idempotent: a typed schema is retyped.
    """
    definitions = (schema or {}).get("definitions") or {}
    cfg_def = definitions.get(CONFIG_DEF)
    if not isinstance(cfg_def, dict) or not all(s in cfg_def.get("properties", {}) for s, _, _ in SECTIONS):
        return None
    out = TypedSchema(schema=copy.deepcopy(schema))
    definitions = out.schema["definitions"]
    section_defs = {PipelineConfig.model_fields[s].annotation.__name__ for s, _, _ in SECTIONS}
    for stale in [d for d in definitions if d.startswith(tuple(f"{n}." for n in section_defs) + ("selftrain.",))]:
        del definitions[stale]  # an earlier typing's variants (and plugins since uninstalled)
    cfg_props = definitions[CONFIG_DEF]["properties"]
    chosen = chosen or {}
    for section, key, group in SECTIONS:
        section_def = PipelineConfig.model_fields[section].annotation.__name__
        base = definitions[section_def]
        default = _default_name(section, key)
        kind, variants = _kind(section, key), {}
        for rec in discover(group):
            if rec.status != "ok" or rec.cls is None:
                out.skipped.append(_record_label(rec))
                continue
            if rec.name in variants:
                continue
            options = _options_schema(rec.cls, group, rec.name, definitions)
            variants[rec.name] = _variant(base, kind, key, rec.name, options, rec.name != default,
                                          getattr(rec.cls, "summary", ""))
        first = chosen.get(section, default)
        if first not in variants:  # named by the deployment, not installed here: keep it runnable
            free = {"type": "object", "additionalProperties": True}
            variants[first] = _variant(base, kind, key, first, free, first != default,
                                       "not installed where the schema was built: options untyped")
            out.untyped.append(f"{section}.{key}={first}")
        order = [first] + sorted(n for n in variants if n != first)
        refs = []
        for name in order:
            ref, fields = _def_names(section_def, name)
            definitions[fields] = variants[name]
            definitions[ref] = {"title": name, "description": variants[name]["description"],
                                "$ref": f"#/definitions/{fields}"}
            refs.append({"$ref": f"#/definitions/{ref}"})
        old = cfg_props[section]
        prop = {k: v for k, v in old.items() if k not in ("$ref", "anyOf", "discriminator", "allOf", "description")}
        prop.setdefault("title", section.replace("_", " ").title())
        about = PipelineConfig.model_fields[section].description
        prop["description"] = (f"{about} " if about else "") + f"Pick the {kind}: each one has its own options."
        prop["anyOf"] = refs
        prop["discriminator"] = {"propertyName": key}  # OpenAPI's hint; validation relies on the consts
        cfg_props[section] = prop
        out.typed[section] = order
    return out


def variant(schema: dict, section: str, name: str) -> dict:
    """The fields schema of plugin ``name``'s variant of ``section`` in a typed ``schema``."""
    section_def = PipelineConfig.model_fields[section].annotation.__name__
    return schema["definitions"][_def_names(section_def, name)[1]]
