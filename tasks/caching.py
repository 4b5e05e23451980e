"""Cache keys for stage tasks: the config sections a stage reads + the content identity of its inputs.

URIs are keyed by what is behind them (fsspec checksums of the file, or of every file in a
model directory), so a stage whose input changed on disk is recomputed even though the
path is the same. Models and tensors are never hashed or pickled: only their metadata.
"""

from __future__ import annotations

from typing import Any

from selftrain.config import PipelineConfig
from selftrain.core.common import io
from selftrain.config import used_versions
from selftrain.plugins.registry import plugin_versions


def _ident(value: Any) -> Any:
    if isinstance(value, str):
        return [value, io.content_id(value)]
    if isinstance(value, dict):
        return {k: _ident(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_ident(v) for v in value]
    return value


def stage_key(*sections: str):
    """cache_key_fn for a task over ``(cfg: PipelineConfig, *uris_or_values)``."""

    def key(context, parameters: dict) -> str:
        cfgs = [v for v in parameters.values() if isinstance(v, PipelineConfig)]
        # upgrading a plugin the run uses invalidates; installing or upgrading an unrelated one does not
        parts: list[Any] = [context.task.name, used_versions(cfgs[0]) if cfgs else plugin_versions()]
        for name, value in parameters.items():
            if isinstance(value, PipelineConfig):
                parts.append([value.run_dir, value.seed, value.device])
                parts.append({s: getattr(value, s).model_dump(mode="json") for s in sections})
            else:
                parts.append([name, _ident(value)])
        return io.digest(*parts)

    return key
