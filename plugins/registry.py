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

from selftrain.plugins import PLUGIN_API_VERSION, Labeler, ModelProvider, Objective

GROUPS: dict[str, type] = {
    "selftrain.objectives": Objective,
    "selftrain.models": ModelProvider,
    "selftrain.labelers": Labeler,
}
#: config key that names the plugin of each group, for error messages.
CONFIG_KEYS = {
    "selftrain.objectives": "pretrain.objective",
    "selftrain.models": "model.name",
    "selftrain.labelers": "pseudo_label.labeler",
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
    except Exception as exc:  # a broken plugin must not take the others down
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
        elif rec.status == "ok":
            owners[ep.name] = rec
        records.append(rec)
    return tuple(sorted(records, key=lambda r: (r.name, r.status != "ok")))


def all_plugins() -> list[PluginRecord]:
    return [rec for group in GROUPS for rec in discover(group)]


def get(group: str, name: str) -> type:
    """The plugin class called ``name`` in ``group``, or a PluginError saying the fix."""
    records: dict[str, PluginRecord] = {}
    for r in discover(group):  # sorted: a working record of a name comes before broken ones
        records.setdefault(r.name, r)
    installed = sorted(n for n, r in records.items() if r.status == "ok")
    key = CONFIG_KEYS[group]
    rec = records.get(name)
    if rec is None:
        raise PluginError(
            f"Unknown {group.split('.')[-1][:-1]} {name!r}; installed: {', '.join(installed) or 'none'}. "
            f"Fix {key} or pip install the plugin."
        )
    if rec.status != "ok":
        raise PluginError(
            f"Plugin {name!r} ({group}, from {rec.dist} {rec.version}) cannot be used: {rec.error}. "
            f"Working ones: {', '.join(installed) or 'none'}. Fix {key} or repair the plugin."
        )
    return rec.cls  # type: ignore[return-value]


def clear_cache() -> None:
    discover.cache_clear()


def plugin_versions() -> dict[str, str]:
    """{distribution: version} of every distribution providing a working plugin (for cache keys and model cards)."""
    return {r.dist: r.version for r in all_plugins() if r.status == "ok"}
