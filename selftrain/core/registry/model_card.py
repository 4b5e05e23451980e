"""Human-readable views of the model registry: the model card (each version's README.md), the
registry table (``selftrain models list``, the Prefect table artifact) and the retrain report."""

from __future__ import annotations

from selftrain.core.registry.store import Registry


def _f(x) -> str:
    return "" if x is None else f"{x:.3f}"


PROBE_SNIPPET = (
    "import json\n\nimport torch\n"
    "from safetensors.numpy import load_file\n"
    "from transformers import AutoModel, AutoTokenizer\n\n"
    "meta = json.load(open(f\"{path}/selftrain_classifier.json\"))  # labels, pooling, extra_layer, max_length\n"
    "tok, body = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()\n"
    "enc = tok(texts, padding=True, truncation=True, max_length=meta[\"max_length\"], return_tensors=\"pt\")\n"
    "with torch.no_grad():\n"
    "    hs = body(**enc, output_hidden_states=True).hidden_states  # (layers + 1) x (N, T, H)\n"
    "m = enc[\"attention_mask\"].unsqueeze(-1).float()\n"
    "mean = lambda h: torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)  # (N, H); pooling: meta[\"pooling\"]\n"
    "emb = mean(hs[-1])\n"
    "if meta[\"extra_layer\"] is not None:  # the middle layer's view, see meta[\"features\"]\n"
    "    emb = torch.cat([emb, mean(hs[meta[\"extra_layer\"]])], -1) / 2 ** 0.5  # (N, 2H)\n"
    "head = load_file(f\"{path}/head.safetensors\")\n"
    "logits = emb.numpy() @ head[\"weight\"].T + head[\"bias\"]  # (N, C); classes: meta[\"labels\"]\n"
    "# softmax(logits) is calibrated: the temperature meta[\"temperature\"] is already folded into the head\n"
    "# trained with extra_layer: null -> SentenceTransformer(path).encode(texts) gives emb\n")
FINETUNE_SNIPPET = (
    "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
    "model = AutoModelForSequenceClassification.from_pretrained(path)\n"
    "tokenizer = AutoTokenizer.from_pretrained(path)\n")


def load_snippet(reg: Registry, version: str, classifier: str = "finetune") -> str:
    """How to load a version with plain libraries (which ones depends on the classifier plugin that
    trained it), or with selftrain for any plugin."""
    if "://" in reg.root:
        get = (f'from selftrain.core.registry.store import Registry\n'
               f'path = Registry("{reg.root}").local_model("{version}")  # downloaded once into ~/.cache/selftrain\n')
    else:
        get = f'path = "{reg.uri("versions", version, "model")}"\n'
    plain = {"probe": PROBE_SNIPPET, "setfit": PROBE_SNIPPET, "finetune": FINETUNE_SNIPPET}.get(classifier)
    body = ("```python\n" + get + plain + "```\n\n") if plain else ""
    return (f"Trained by the `{classifier}` classifier plugin. " + ("With plain libraries:\n\n" + body if body else "\n\n") +
            "With selftrain, for any classifier plugin: `selftrain.core.train.classifiers.load_trained(cfg, path).predict_proba(texts)`.\n\n"
            f'The champion, whichever version it is: `Registry("{reg.root}").local_model("champion")`.')


def model_card(reg: Registry, meta: dict, metrics: dict, cfg) -> str:
    """README.md of a version: data, labels per class, pseudo-labels, metrics, versions, how to load."""
    version = meta["version"]
    labels = meta["labels"]
    data, fe, dec = meta["data"], meta["frozen_eval"], meta["decision"]
    gold, pseudo = data["gold_per_class"], data["pseudo_labels"]
    fm = metrics["frozen_eval"]
    head = ["label", "gold train", "gold val", "gold test"] + [f"pseudo-labels r{p['round']}" for p in pseudo] + [
        "frozen eval rows", "frozen eval F1"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for lab in labels:
        cells = [lab, gold["train"].get(lab, 0), gold["val"].get(lab, 0), gold["test"].get(lab, 0)]
        cells += [p["per_class"].get(lab, 0) for p in pseudo]
        pc = fm["per_class"].get(lab, {})
        cells += [pc.get("support", 0), _f(pc.get("f1"))]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    champ = fe.get("champion_at_registration")
    cmp_head = f" champion then ({champ['version']}) |" if champ else ""
    mrows = [f"| metric | {version} |{cmp_head}", "|---|---:|" + ("---:|" if champ else "")]
    for k, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("ece", "ECE")):
        mrows.append(f"| {name} | {_f(fe['metrics'][k])} |" + (f" {_f(champ['metrics'][k])} |" if champ else ""))
    rt = metrics["run_test"]
    sources = "\n".join(f"- `{src}`: fingerprint `{fp}`" for src, fp in data["sources"].items())
    code = meta["code"]
    commit = code.get("git_commit")
    code_line = f"selftrain {code['selftrain']}" + (f", git commit `{commit}`" + (" (uncommitted changes)" if code.get("git_dirty") else "")
                                                    if commit else ", no git checkout")
    plugins = ", ".join(f"{k} {v}" for k, v in sorted(meta["plugins"].items())) if isinstance(meta["plugins"], dict) else str(meta["plugins"])
    pc = cfg.pretrain
    pretrain = (f"{pc.objective} ({f'{pc.max_steps} steps' if pc.max_steps else f'{pc.epochs} epoch(s)'})"
                if pc.enabled else "off")
    pl = f"{cfg.pseudo_label.labeler}, {cfg.pseudo_label.rounds} round(s)" if cfg.pseudo_label.enabled else "off"
    # the finetune section's epochs and lr drive only the classifiers that finetune with them
    fit = (f"`{cfg.classifier.name}`, up to {cfg.finetune.epochs} epochs at lr {cfg.finetune.lr}"
           if cfg.classifier.name == "finetune" else f"`{cfg.classifier.name}` {cfg.classifier.options or ''}".rstrip())
    has_val = cfg.data.val_per_class > 0 or cfg.data.columns.split is not None
    kept = ("chosen on validation macro-F1" if has_val else
            "no validation split: the last model the labeler's guards let through")
    return f"""# {reg.name} {version}

Text classifier ({len(labels)} classes: {', '.join(labels)}) trained by selftrain's `retrain` flow on
{meta['created']}; at registration: {dec['reason']}.
Whether it is the champion now: `champion.json` in the registry (`selftrain models list --root ...`).

## How to load it

{load_snippet(reg, version, meta.get('classifier', 'finetune'))}

## Data

{sources}

{data['rows']} source rows; {data['frozen_eval_rows_excluded']} of them are (near-)copies of the frozen evaluation set
and were removed before training. Why this version was trained: {data['retrain_reason']}.

Labels used per class (gold = human labels from the source; pseudo-labels = the teacher's predictions on
unlabeled rows, used for training only and never written back as gold labels):

{chr(10).join(rows)}

## Metrics

On the registry's frozen evaluation set ({fe['rows']} rows, drawn when the registry was created, never trained
on; fingerprint `{fe['fingerprint']}`); promotion metric: `{metrics['metric']}`.

{chr(10).join(mrows)}

On the run's own test split ({rt.get('n', '?')} rows): accuracy {_f(rt['accuracy'])}, macro-F1 {_f(rt['macro_f1'])}.

## Training

Model plugin `{cfg.model.name}` {cfg.model.options or ''} (max length {cfg.model.max_length}); pretraining: {pretrain};
pseudo-labels: {pl}; classifier: {fit}; seed {cfg.seed}.
The stage kept as this version: `{meta['stage']}` ({kept}). Full config: `config.yaml`.

## Provenance

- Code: {code_line}
- Plugins: {plugins}
- Files: `model/` (save_pretrained, tokenizer included), `config.yaml`, `metrics.json` (frozen eval, the
  run's test metrics), `version.json` (this card's data as JSON), run directory `{meta['run_dir']}`.
"""


def pseudo_labels_trained_on(stage: str, rounds: list[dict]) -> int:
    """Pseudo-labelled rows the version's model trained on: round r's selection for ``student-r`` (or
    ``student-r-distilled``), none for the baseline or the teacher. Not the sum over rounds: a round's
    selection already holds the rows an earlier round kept (1,255 rows for student-5, where the sum
    of the five rounds read 3,926 on a pool of 1,374)."""
    parts = stage.split("-")
    if parts[0] != "student" or len(parts) < 2 or not parts[1].isdigit():
        return 0
    return next((int(r.get("kept", 0)) for r in rounds if r.get("round") == int(parts[1])), 0)


def registry_rows(reg: Registry) -> list[dict]:
    """One row per committed version: the table of ``selftrain models list`` and of the Prefect artifact."""
    champ = reg.champion()
    rows = []
    for v in reg.versions():
        info = reg.version_info(v)
        fe = (info.get("frozen_eval") or {}).get("metrics", {})
        data = info.get("data", {})
        gold = sum((data.get("gold_per_class", {}).get("train") or {}).values())
        pseudo = pseudo_labels_trained_on(info.get("stage", ""), data.get("pseudo_labels", []))
        rows.append({"version": v, "champion": "yes" if v == champ else "", "created": info.get("created", ""),
                     "macro_f1": fe.get("macro_f1"), "accuracy": fe.get("accuracy"), "gold_train": gold,
                     "pseudo_labels": pseudo, "stage": info.get("stage", ""),
                     # no decision recorded (version.json missing or emptied): unknown, not "reject"
                     "decision": "—" if "decision" not in info else
                     "promote" if (info["decision"] or {}).get("promote") else "reject"})
    return rows


def rows_markdown(rows: list[dict]) -> str:
    lines = ["| version | champion | created | frozen macro-F1 | frozen accuracy | gold train | pseudo-labels | stage | retrain decision |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['version']} | {r['champion']} | {r['created']} | {_f(r['macro_f1'])} | {_f(r['accuracy'])} | "
                     f"{r['gold_train']} | {r['pseudo_labels']} | {r['stage']} | {r['decision']} |")
    return "\n".join(lines)


def retrain_markdown(reg: Registry, out: dict) -> str:
    """The retrain flow's report (a Prefect markdown artifact)."""
    if out["status"] == "unchanged":
        return f"# Retrain `{reg.name}`: nothing to do\n\n{out['reason']}\n\nRegistry: `{reg.root}`.\n"
    fe = out["frozen_eval"]
    ch, cp = fe["challenger"], fe["champion"]
    d = out["decision"]
    lines = [f"# Retrain `{reg.name}`: {out['version']} {'promoted' if out['promoted'] else 'not promoted'}", "",
             d["reason"] + ".", "", "| model | frozen accuracy | frozen macro-F1 | ECE |", "|---|---:|---:|---:|",
             f"| challenger {out['version']} | {_f(ch['accuracy'])} | {_f(ch['macro_f1'])} | {_f(ch['ece'])} |"]
    if cp:
        lines.append(f"| champion {out['champion_before']} | {_f(cp['accuracy'])} | {_f(cp['macro_f1'])} | {_f(cp['ece'])} |")
    lines += ["", f"Champion now: **{out['champion']}**. Registry: `{reg.root}`; run directory: `{out['run_dir']}`.", "",
              "## Registry", "", rows_markdown(registry_rows(reg))]
    return "\n".join(lines) + "\n"
