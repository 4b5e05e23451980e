"""Entry-point discovery for selftrain plugins.

Each entry point loads on its own: one that fails to import, is not a subclass of its
group's base class, or declares an ``api_version`` this selftrain does not satisfy is
recorded with its name, distribution, version and error; the others still work.

Environment:
  SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD=1   load only selftrain's own built-ins
  SELFTRAIN_PLUGIN_ALLOWLIST=a,b        load only entry points from these distributions
                                        (selftrain itself is always allowed)
Plugins are code that runs with your privileges: install only what you trust.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from selftrain.plugins import PLUGIN_API_VERSION, Classifier, Labeler, ModelProvider, Objective

GROUPS: dict[str, type] = {
    "selftrain.objectives": Objective,
    "selftrain.models": ModelProvider,
    "selftrain.labelers": Labeler,
    "selftrain.classifiers": Classifier,
}
#: config key that names the plugin of each group, for error messages.
CONFIG_KEYS = {
    "selftrain.objectives": "pretrain.objective",
    "selftrain.models": "model.name",
    "selftrain.labelers": "pseudo_label.labeler",
    "selftrain.classifiers": "classifier.name",
}
OWN_DIST = "selftrain"


class PluginError(ValueError):
    """A plugin is unknown, broken or incompatible. The message says how to fix it."""


@dataclass
class PluginRecord:
    group: str
    name: str
    value: str  # "module:attr"
    dist: str
    version: str
    status: str  # "ok" | "error" | "disabled"
    error: str = ""
    cls: type | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "cls"} | {
            "summary": getattr(self.cls, "summary", "") if self.cls else ""
        }


def _canon(name: str) -> str:
    return canonicalize_name(name) if name != "?" else name


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def check_api_version(cls: type, api_version: str = PLUGIN_API_VERSION) -> str | None:
    """Return an error message if ``cls.api_version`` does not admit ``api_version``."""
    spec = getattr(cls, "api_version", None)
    if not spec:
        return None
    try:
        ok = Version(api_version) in SpecifierSet(spec)
    except InvalidSpecifier:
        return f"api_version {spec!r} is not a valid version specifier"
    if not ok:
        return (
            f"written for plugin API {spec}, but this selftrain provides {api_version}; "
            "upgrade the plugin or install a matching selftrain"
        )
    return None


def load_entry_point(group: str, ep: EntryPoint) -> PluginRecord:
    dist, version = _dist_of(ep)
    rec = PluginRecord(group=group, name=ep.name, value=ep.value, dist=dist, version=version, status="ok")
    allow = os.environ.get("SELFTRAIN_PLUGIN_ALLOWLIST")
    if _canon(dist) != OWN_DIST:
        if os.environ.get("SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD", "").lower() in {"1", "true", "yes"}:
            rec.status, rec.error = "disabled", "third-party autoload is off (SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD)"
            return rec
        if allow is not None and _canon(dist) not in {_canon(d.strip()) for d in allow.split(",") if d.strip()}:
            rec.status, rec.error = "disabled", f"distribution {dist!r} is not in SELFTRAIN_PLUGIN_ALLOWLIST"
            return rec
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down (sys.exit at import too)
        rec.status, rec.error = "error", f"import failed: {type(exc).__name__}: {exc}"
        return rec
    base = GROUPS[group]
    if not (isinstance(obj, type) and issubclass(obj, base)):
        rec.status, rec.error = "error", f"{ep.value} is not a subclass of selftrain.plugins.{base.__name__}"
        return rec
    if err := check_api_version(obj):
        rec.status, rec.error = "error", err
        return rec
    rec.cls = obj
    return rec


def allowlist_problems() -> list[str]:
    """Entries of SELFTRAIN_PLUGIN_ALLOWLIST that allow nothing: a name that is no installed
    distribution (a typo silently disables the plugin it meant) or a pattern (``*`` is not a
    wildcard). Empty when the variable is unset or every entry names an installed distribution."""
    from importlib.metadata import distributions

    allow = os.environ.get("SELFTRAIN_PLUGIN_ALLOWLIST")
    if allow is None:
        return []
    third = sorted({_canon(_dist_of(ep)[0]) for g in GROUPS for ep in entry_points(group=g)} - {OWN_DIST})
    installed = {_canon(d.metadata["Name"]) for d in distributions() if d.metadata["Name"]} | set(third)
    out = []
    for entry in (e.strip() for e in allow.split(",")):
        if entry and _canon(entry) not in installed:
            out.append(f"SELFTRAIN_PLUGIN_ALLOWLIST entry {entry!r} is no installed distribution, so it allows nothing "
                       f"(entries are distribution names, compared as pip does (case, -, _ and . alike), no patterns; installed plugin distributions: "
                       f"{', '.join(third) or 'none'})")
    return out


@lru_cache(maxsize=None)
def discover(group: str) -> tuple[PluginRecord, ...]:
    """All entry points of ``group``, each loaded independently (cached per process).

    selftrain's own entry points load first and win a name clash; a later entry point with
    a name already taken is listed as an error naming the owner, never silently dropped.
    """
    if group not in GROUPS:
        raise KeyError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")
    eps = sorted(entry_points(group=group), key=lambda ep: _canon(_dist_of(ep)[0]) != OWN_DIST)
    records: list[PluginRecord] = []
    owners: dict[str, PluginRecord] = {}
    for ep in eps:
        rec = load_entry_point(group, ep)
        owner = owners.get(ep.name)
        if owner is not None and rec.status == "ok":
            rec.status, rec.cls = "error", None
            rec.error = (f"name {ep.name!r} is already provided by {owner.dist} {owner.version}; "
                         "the plugin's author must rename its entry point")
            if _canon(owner.dist) != OWN_DIST:
                # two third parties: which one loaded first is install order, so neither is used
                owner.status, owner.cls = "error", None
                for mine, other in ((owner, rec), (rec, owner)):
                    mine.error = (f"name {ep.name!r} is also provided by {other.dist} {other.version}, so which one "
                                  f"runs would depend on install order; uninstall one of {owner.dist} and {rec.dist} "
                                  "(or leave one out of SELFTRAIN_PLUGIN_ALLOWLIST)")
        elif rec.status == "ok":
            owners[ep.name] = rec
        records.append(rec)
    return tuple(sorted(records, key=lambda r: (r.name, r.status != "ok")))


def all_plugins() -> list[PluginRecord]:
    return [rec for group in GROUPS for rec in discover(group)]


def get(group: str, name: str, key: str | None = None) -> type:
    """The plugin class called ``name`` in ``group``, or a PluginError saying the fix (in config
    key ``key``; default: the group's own key, e.g. classifier.name)."""
    records: dict[str, PluginRecord] = {}
    for r in discover(group):  # sorted: a working record of a name comes before broken ones
        records.setdefault(r.name, r)
    installed = sorted(n for n, r in records.items() if r.status == "ok")
    key = key or CONFIG_KEYS[group]
    rec = records.get(name)
    if rec is None:
        import difflib

        close = difflib.get_close_matches(name, list(records), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"Unknown {group.split('.')[-1][:-1]} {name!r}; installed: {', '.join(installed) or 'none'}.{hint} "
            f"Fix {key} or pip install the plugin."
        )
    if rec.status != "ok":
        fix = (f"add {rec.dist} to SELFTRAIN_PLUGIN_ALLOWLIST (or unset it)" if "SELFTRAIN_PLUGIN_ALLOWLIST" in rec.error
               and rec.status == "disabled" else "unset SELFTRAIN_DISABLE_PLUGIN_AUTOLOAD" if rec.status == "disabled"
               else "repair the plugin")
        raise PluginError(
            f"Plugin {name!r} ({group}, from {rec.dist} {rec.version}) cannot be used: {rec.error}. "
            f"Working ones: {', '.join(installed) or 'none'}. Fix {key} or {fix}."
        )
    return rec.cls  # type: ignore[return-value]


def _working(group: str, name: str) -> PluginRecord | None:
    """The working record of ``name`` in ``group``, or None."""
    return next((r for r in discover(group) if r.name == name and r.status == "ok"), None)


def origin(group: str, name: str) -> str:
    """'<distribution> <version>' of the working plugin ``name`` in ``group`` (for messages that must
    say whose code failed), or '?' when there is none."""
    rec = _working(group, name)
    return f"{rec.dist} {rec.version}" if rec else "?"


def clear_cache() -> None:
    discover.cache_clear()


def versions_of(used: list[tuple[str, str]]) -> dict[str, str]:
    """{distribution: version} of selftrain and of the working plugins ``used`` ((group, name)
    pairs): what a stage's cache key, a pretraining checkpoint and a run's metrics depend on. An
    unrelated plugin installed, upgraded or switched off changes none of them."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out = {OWN_DIST: version(OWN_DIST)}
    except PackageNotFoundError:  # running from a source tree without an install
        out = {}
    for group, name in used:
        if (rec := _working(group, name)) is not None:
            out[rec.dist] = rec.version
    return dict(sorted(out.items()))


def plugin_versions() -> dict[str, str]:
    """{distribution: version} of every distribution providing a working plugin (for cache keys and model cards)."""
    return {r.dist: r.version for r in all_plugins() if r.status == "ok"}


# ---------------------------------------------------------------- `selftrain plugins show`
_BOUNDS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length")


def find(name: str, group: str | None = None) -> list[PluginRecord]:
    """Every record called ``name`` (in ``group``, or in any group), working ones first;
    a PluginError naming the installed plugins if there is none."""
    if group and group not in GROUPS and f"selftrain.{group}" in GROUPS:
        group = f"selftrain.{group}"  # --group objectives
    if group and group not in GROUPS:
        raise PluginError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")
    groups = [group] if group else list(GROUPS)
    recs = [r for g in groups for r in discover(g) if r.name == name]
    if not recs:
        installed = sorted({r.name for g in groups for r in discover(g) if r.status == "ok"})
        where = f" in {group}" if group else ""
        raise PluginError(f"Unknown plugin {name!r}{where}; installed: {', '.join(installed) or 'none'}. "
                          "Fix: one of these names (selftrain plugins list shows them by group)")
    return recs


def _type_name(annotation) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def describe_options(config_cls: type) -> list[dict]:
    """One dict per field of a plugin's pydantic ``Config``: name, type, default (or
    required), bounds (ge/gt/le/lt... from the field's metadata), description."""
    from pydantic_core import PydanticUndefined

    rows = []
    for fname, f in config_cls.model_fields.items():
        bounds = {}
        for m in f.metadata:
            for b in _BOUNDS:
                if getattr(m, b, None) is not None:
                    bounds[b] = getattr(m, b)
        required = f.is_required()
        if f.default_factory is not None:
            default = f.default_factory()
        else:
            default = None if f.default is PydanticUndefined else f.default
        rows.append({"name": f.alias or fname, "type": _type_name(f.annotation), "required": required,
                     "default": default, "bounds": bounds, "description": f.description or ""})
    return rows


def describe(rec: PluginRecord) -> dict:
    """``rec`` for `selftrain plugins show`: its record plus API version, summary, config key
    and options (a broken plugin has no class: no options)."""
    cls = rec.cls
    out = rec.as_dict() | {"config_key": CONFIG_KEYS.get(rec.group, ""),
                           "options_key": CONFIG_KEYS.get(rec.group, "").rsplit(".", 1)[0] + ".options",
                           "plugin_api": PLUGIN_API_VERSION}
    if cls is None:
        return out | {"api_version": None, "options": []}
    out |= {"api_version": getattr(cls, "api_version", ""), "options": describe_options(cls.Config)}
    if isinstance(getattr(cls, "requires", None), frozenset):
        out["requires"] = sorted(cls.requires)
    return out


def _bounds_text(b: dict) -> str:
    low = next(((v, "<" if k == "gt" else "<=") for k, v in b.items() if k in ("gt", "ge")), None)
    high = next(((v, "<" if k == "lt" else "<=") for k, v in b.items() if k in ("lt", "le")), None)
    if low and high:
        parts = [f"{low[0]} {low[1]} x {high[1]} {high[0]}"]
    elif low:
        parts = [f"x {low[1].replace('<', '>')} {low[0]}"]
    else:
        parts = [f"x {high[1]} {high[0]}"] if high else []
    parts += [f"{k}={v}" for k, v in b.items() if k not in ("gt", "ge", "lt", "le")]
    return ", ".join(parts)


def format_description(d: dict) -> str:
    """The human-readable page of one plugin (``describe``'s dict)."""
    import json

    lines = [f"{d['name']}  ({d['group']}; {d['config_key']}: {d['name']})",
             f"  distribution: {d['dist']} {d['version']}",
             f"  entry point:  {d['value']}",
             f"  status:       {d['status']}" + (f": {d['error']}" if d["error"] else "")]
    if d["api_version"] is not None:
        lines.append(f"  plugin API:   {d['api_version'] or '(no check)'}  (this selftrain provides {d['plugin_api']})")
    if d["summary"]:
        lines.append(f"  summary:      {d['summary']}")
    if d.get("requires"):
        lines.append(f"  backbones:    {', '.join(d['requires'])}")
    if d["status"] != "ok":
        return "\n".join(lines)
    if not d["options"]:
        lines.append(f"  options ({d['options_key']}): none")
        return "\n".join(lines)
    lines.append(f"  options ({d['options_key']}):")
    for o in d["options"]:
        default = "required" if o["required"] else f"default {json.dumps(o['default'], default=str)}"
        bounds = _bounds_text(o["bounds"])
        lines.append(f"    {o['name']}: {o['type']}, {default}" + (f", {bounds}" if bounds else ""))
        if o["description"]:
            lines.append(f"        {o['description']}")
    return "\n".join(lines)
