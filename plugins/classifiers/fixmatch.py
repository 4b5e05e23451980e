"""Consistency-regularised finetuning of the body on the unlabeled pool (FixMatch family), then the
probe's head on the adapted embeddings.

The frozen probe is stuck where the checkpoint's embedding space does not separate the classes
(sentiment in a topical sentence encoder): self-training inside that space cannot move the
boundary's features. Here the body moves. Each step (Sohn et al. 2020, FixMatch; Xie et al.
2020, UDA):

- a batch of B labelled rows (gold, + pseudo-labelled rows with their weights and soft targets):
  weighted soft cross-entropy of a linear head on the body's pooled, L2-normalised embedding;
- a batch of mu * B pool rows, each seen twice: a weak view (the text, the encoder's dropout:
  SimCSE's view, Gao et al. 2021) scored without gradient, and a strong view (``views.py``: token
  dropout, a deleted span, neighbour swaps); the weak view's probabilities, aligned to the class
  prior (ReMixMatch's distribution alignment, Berthelot et al. 2020), give a hard target where
  they clear a per-class threshold that adapts to how often the model is confident on that class
  (FlexMatch, Zhang et al. 2021), or, with ``softmatch``, every row weighted by a Gaussian of its
  confidence truncated at the running mean confidence (SoftMatch, Chen et al. 2023), or, with
  ``freematch``, a bar per class that follows the moving average of the model's own confidence,
  plus FreeMatch's fairness term (Wang et al. 2023); the strong
  view is trained to that target with weight ``lambda_u``; with ``teacher_ema`` > 0 the weak view
  is scored by an exponential moving average of the body and head instead of the model being
  trained (Mean Teacher, Tarvainen & Valpola 2017): a target then changes slowly, so one step's
  confident mistake is not at once trained into the next step's targets (confirmation bias).

The head starts from a logistic regression on the frozen embeddings (the probe's own solution,
so step 0 is the supervised core), and when training ends the probe's head is refit on the
adapted body (``Probe.fit``: middle-layer view, label-name rows, soft targets and weights exact):
the saved layout, loading and prediction are exactly the probe's.

With ``frozen_weight`` w > 0 the saved model is an ensemble of two cores: the probe fitted on the
frozen body the fit started from (the supervised core, saved in ``frozen_core/``) and the adapted
model; its probabilities are (1 - w) * adapted + w * frozen (``TrainedBlend``). On the tweets the
adapted body paid where the frozen draw was weak and cost where it was strong (dev-eval sessions
9 and 13, docs/experiments.md); averaging the two cores' predictions is the classic remedy (an
output-space ensemble, cf. WiSE-FT's output-space variant, Wortsman et al. 2022).

The pool reaches ``fit`` as ``LabeledRows.unlabeled`` (``uses_unlabeled``); the pipeline passes it
to every model but the ``baseline``, which stays the supervised core. Without a pool the body is
finetuned on the labelled rows alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from selftrain.plugins import FitReport, LabeledRows, TrainedClassifier
from selftrain.plugins.classifiers.consistency import (align_distribution, consistency_loss, ema, flexmatch_thresholds,
                                                       freematch_fairness_loss, freematch_thresholds, freematch_update,
                                                       soft_consistency_loss, softmatch_update, softmatch_weights)
from selftrain.plugins.classifiers.embed import pool, read_pooling, save_tuned_body
from selftrain.plugins.classifiers.probe import FROZEN_DIR, META_FILE, Probe, ProbeConfig, TrainedProbe, fit_head
from selftrain.plugins.classifiers.views import StrongViewConfig, strong_view
from selftrain.plugins.classifiers.wise import interpolate_weights
from selftrain.plugins.objectives.common import pad_batch


class FixMatchConfig(ProbeConfig):
    steps: int = Field(150, ge=1, description="Optimizer steps of body adaptation (each: batch_size labelled rows + mu * batch_size pool rows, two views each).")
    batch_size: int = Field(16, ge=1, description="Labelled rows per step (sampled with replacement from gold + pseudo-labelled rows).")
    mu: int = Field(3, ge=0, description="Pool rows per labelled row in a step (FixMatch's mu; 0: supervised finetuning only).")
    lr: float = Field(2e-5, gt=0, description="AdamW learning rate of the body.")
    head_lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the training head (the saved head is refit by logistic regression).")
    lambda_u: float = Field(1.0, ge=0, description="Weight of the unlabeled consistency loss.")
    tau: float = Field(0.95, gt=0, lt=1, description="Confidence threshold before FlexMatch's per-class scaling (FixMatch's tau).")
    tau_min: float = Field(0.5, ge=0, lt=1, description="Floor of every per-class threshold: FlexMatch's warm-up starts its thresholds near 0 (every pool row a target), which a run of a few hundred steps never leaves (0 and 0.7 both scored below 0.5 on every tweets dev-eval draw, one fit each, by about one fit's own seed noise: docs/experiments.md sessions 22-23).")
    flex: bool = Field(True, description="FlexMatch per-class thresholds (False: FixMatch's fixed tau for every class).")
    softmatch: bool = Field(False, description="SoftMatch's soft mask instead of a threshold: each pool row weighted by a "
                            "Gaussian of its confidence truncated at the running mean (tau, tau_min and flex then unused).")
    softmatch_momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of SoftMatch's running mean and variance of "
                                      "the confidence (the paper's 0.999 is for ~1M steps; at 150 steps it would barely leave its start).")
    freematch: bool = Field(False, description="FreeMatch's self-adaptive thresholds instead of FlexMatch's: the "
                            "global bar is a moving average of the pool's max-probability and each class's bar that "
                            "times its moving-average probability over the largest (tau, tau_min and flex then unused).")
    freematch_momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of FreeMatch's moving averages (as for "
                                      "SoftMatch: the paper's 0.999 is for ~1M steps; at 150 steps the bars would stay near 1 / C).")
    freematch_fairness: float = Field(0.01, ge=0, description="Weight of FreeMatch's self-adaptive fairness term "
                                      "(the paper's lambda_f); 0: thresholds only.")
    teacher_ema: float = Field(0.0, ge=0, lt=1, description="Decay of a Mean Teacher: the weak view's targets come from an "
                               "exponential moving average of the body and head (torch's AveragedModel) with this decay; "
                               "0: from the model being trained (FixMatch). 0.99 averages over ~100 steps.")
    keep_teacher: bool = Field(False, description="With teacher_ema > 0: the saved body is the mean teacher's (the "
                               "weight average Mean Teacher reports as the better model), not the last step's.")
    align: bool = Field(True, description="Distribution alignment of the weak view's probabilities to the class prior of the labelled rows.")
    align_momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of the running mean of predictions that alignment divides by.")
    head_scale: float = Field(10.0, gt=0, description="Logit scale of the training head on unit-norm embeddings (the logistic-regression init is divided by it; 5 scored below 10 on every tweets dev-eval draw, one fit each, by about one fit's own seed noise: docs/experiments.md sessions 22-23).")
    max_unlabeled: int = Field(4000, ge=0, description="Pool rows used at most (a seeded random sample of the pool beyond that). "
                               "FlexMatch's warm-up keeps every threshold on tau_min while most of these rows have never been "
                               "confident: 20,000 rows kept them there for all 150 steps and scored 0.010 below 3,000 on tweets "
                               "dev-eval (docs/experiments.md session 24).")
    wise_alpha: float = Field(1.0, gt=0, le=1, description="Weight-space ensemble of the adapted body with the initial one "
                              "(WiSE-FT): (1 - a) * initial + a * adapted before the head is refit; 1: the adapted body.")
    strong: StrongViewConfig = Field(default_factory=StrongViewConfig, description="The strong view's text noise.")
    frozen_weight: float = Field(0.0, ge=0, lt=1, description="Weight of the frozen probe (the supervised core on the "
                                 "body the fit started from, saved in frozen_core/) in the saved model's probabilities: "
                                 "(1 - w) * adapted + w * frozen. 0: the adapted model alone; 0.5: the mean of the two cores.")

    @model_validator(mode="after")
    def _own_mask_has_no_threshold(self):  # softmatch and freematch each replace tau
        if self.softmatch and self.freematch:
            raise ValueError("softmatch: true and freematch: true are two ways to choose the pool rows a step trains "
                             "on; keep one of them")
        own = "softmatch" if self.softmatch else "freematch" if self.freematch else None
        clash = sorted({"tau", "tau_min", "flex"} & self.model_fields_set) if own else []
        if clash:
            raise ValueError(f"{own}: true replaces the confidence threshold, so {', '.join(clash)} would be "
                             f"ignored; remove {'it' if len(clash) == 1 else 'them'}, or set {own}: false to use the threshold")
        return self

    @model_validator(mode="after")
    def _keep_teacher_needs_one(self):
        if self.keep_teacher and self.teacher_ema == 0:
            raise ValueError("keep_teacher: true saves the mean teacher's body, but teacher_ema is 0 (no teacher is "
                             "kept); set teacher_ema (e.g. 0.99), or remove keep_teacher")
        return self


def soft_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, C) logits, (B, C) target distributions, (B,) weights -> sum_i w_i CE_i / sum_i w_i."""
    ce = -(targets * F.log_softmax(logits, -1)).sum(1)  # (B,)
    return (weights * ce).sum() / weights.sum().clamp(min=1e-8)


def threshold_note(thresholds: list[torch.Tensor], label_names: list[str], c: FixMatchConfig) -> str:
    """(S,) steps of (C,) per-class thresholds -> where they ended and how often FlexMatch's bar sat
    on the ``tau_min`` floor: in a short run its warm-up keeps most bars there, which makes it close
    to a fixed ``tau_min`` threshold (worth knowing when reading a result). "" without a pool."""
    if not thresholds:
        return ""
    path = torch.stack(thresholds).cpu()  # (S, C)
    last = ", ".join(f"{n} {v:.2f}" for n, v in zip(label_names, path[-1].tolist()))
    flex = c.flex and not c.freematch
    floor = float((path <= c.tau_min + 1e-6).float().mean()) if flex else 0.0
    return (f"; per-class thresholds at the last step: {last}"
            + (f" (on the tau_min {c.tau_min:g} floor {floor:.0%} of class-steps)" if flex else "")
            + (f" (FreeMatch's, from the moving average of the pool's confidence; first step's mean "
               f"{float(path[0].mean()):.2f})" if c.freematch else ""))


class FixMatch(Probe):
    summary = ("consistency-regularised finetuning of the body on the pool (FixMatch / FlexMatch thresholds, "
               "distribution alignment, text-noise strong views), then the probe's head")
    Config = FixMatchConfig
    supports_warm_start = False
    uses_unlabeled = True
    body_fits_labels = True  # the body trains on the labelled rows (API 1.5)
    loadable_with = Probe.loadable_with

    def fit(self, init_dir, label_names, train: LabeledRows, val_texts, val_labels, out_dir, max_epochs=None,
            log=lambda rec: None) -> FitReport:
        from transformers import AutoModel, AutoTokenizer

        c, t0, dev = self.config, time.perf_counter(), self.ctx.device
        torch.manual_seed(self.ctx.seed)
        rng = np.random.default_rng(self.ctx.seed)
        C = len(label_names)
        pooling = read_pooling(init_dir)
        tok = AutoTokenizer.from_pretrained(init_dir)
        body = AutoModel.from_pretrained(init_dir).to(dev)
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id

        def ids_of(texts):  # token ids without the special tokens: the views perturb these
            return tok(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length - 2)["input_ids"]

        def wrap(rows):  # [CLS] row [SEP] (BERT-style tokenizers; others: the row as it is)
            return [([cls_id] if cls_id is not None else []) + (r or [tok.unk_token_id]) + ([sep_id] if sep_id is not None else [])
                    for r in rows]

        def embed(rows, net=None):  # (B,) id lists -> (B, H) unit-norm sentence embeddings, grad through the body
            x, m = pad_batch(wrap(rows), tok.pad_token_id)
            x, m = x.to(dev), m.to(dev)
            net = body if net is None else net
            return F.normalize(pool(net(input_ids=x, attention_mask=m).last_hidden_state, m, pooling["mode"]), dim=-1)

        lab_ids = ids_of(train.texts)
        targets = torch.as_tensor(np.asarray(train.targets, np.float32))  # (N, C)
        weights = torch.as_tensor(np.asarray(train.weights, np.float32))  # (N,)
        pool_texts = list(train.unlabeled or [])
        if len(pool_texts) > c.max_unlabeled:
            pool_texts = [pool_texts[i] for i in np.sort(rng.choice(len(pool_texts), c.max_unlabeled, replace=False))]
        pool_ids = ids_of(pool_texts) if pool_texts and c.mu > 0 else []

        init_state = ({k: v.detach().clone() for k, v in body.state_dict().items()} if c.wise_alpha < 1 else None)
        # the head starts at the probe's solution on the frozen embeddings: step 0 is the supervised core
        body.eval()
        with torch.no_grad():
            e0 = torch.cat([embed(lab_ids[s:s + 64]) for s in range(0, len(lab_ids), 64)]).cpu().numpy()
        W, b = fit_head(e0, targets.numpy(), weights.numpy(), C, self.config.C, self.config.max_iter)
        head = torch.nn.Linear(e0.shape[1], C).to(dev)
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(W / c.head_scale))
            head.bias.copy_(torch.as_tensor(b / c.head_scale))
        opt = torch.optim.AdamW([{"params": body.parameters(), "lr": c.lr}, {"params": head.parameters(), "lr": c.head_lr}])
        teacher = None  # Mean Teacher: an EMA copy of body + head scores the weak view
        if c.teacher_ema > 0 and pool_ids:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            student = torch.nn.ModuleDict({"body": body, "head": head})  # the weights the teacher averages
            teacher = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(c.teacher_ema), use_buffers=True)
        prior = targets[: train.n_gold].sum(0) if train.n_gold else targets.sum(0)
        prior = (prior / prior.sum()).to(dev)  # (C,) the labelled rows' class mix
        running = prior.clone()
        last_pred = np.full(len(pool_ids), -1)  # FlexMatch's sigma: each pool row's latest confident class
        body.train()  # dropout on: the weak view's only noise, as in SimCSE
        if teacher is not None:
            teacher.train()  # the teacher's weak view keeps the same dropout noise
        stats = {"loss_s": [], "loss_u": [], "mask": []}
        thresholds: list[torch.Tensor] = []  # (C,) per step: where FlexMatch's bars went over the fit
        sm_mu, sm_var = torch.tensor(1.0 / C, device=dev), torch.tensor(1.0, device=dev)  # SoftMatch's start
        fm_p = torch.tensor(1.0 / C, device=dev)  # FreeMatch's global bar, class probabilities, histogram: all 1 / C
        fm_model, fm_hist = torch.full((C,), 1.0 / C, device=dev), torch.full((C,), 1.0 / C, device=dev)
        for step in range(c.steps):
            lb = rng.integers(len(lab_ids), size=c.batch_size)
            logits_l = c.head_scale * head(embed([lab_ids[i] for i in lb]))  # (B, C)
            loss = soft_ce(logits_l, targets[lb].to(dev), weights[lb].to(dev))
            stats["loss_s"].append(loss.detach())
            if pool_ids:
                ub = rng.integers(len(pool_ids), size=c.mu * c.batch_size)
                with torch.no_grad():
                    t_body, t_head = (teacher.module["body"], teacher.module["head"]) if teacher is not None else (body, head)
                    p_weak = F.softmax(c.head_scale * t_head(embed([pool_ids[i] for i in ub], t_body)), -1)  # (U, C)
                    running = ema(running, p_weak.mean(0), c.align_momentum)
                    if c.align:
                        p_weak = align_distribution(p_weak, prior, running)
                    conf, pred = p_weak.max(1)
                    if c.softmatch:  # a soft mask: FlexMatch's bookkeeping below is not needed
                        sm_mu, sm_var = softmatch_update(sm_mu, sm_var, conf, c.softmatch_momentum)
                        w_u = softmatch_weights(conf, sm_mu, sm_var)  # (U,) soft mask
                    elif c.freematch:
                        fm_p, fm_model, fm_hist = freematch_update(fm_p, fm_model, fm_hist, p_weak, c.freematch_momentum)
                        thr = freematch_thresholds(fm_p, fm_model)  # (C,)
                    elif c.flex:
                        above = (conf > c.tau).cpu().numpy()
                        last_pred[ub[above]] = pred.cpu().numpy()[above]
                        sigma = torch.as_tensor(np.bincount(last_pred[last_pred >= 0], minlength=C))
                        thr = flexmatch_thresholds(sigma, int((last_pred < 0).sum()), c.tau).clamp(min=c.tau_min).to(dev)
                    else:
                        thr = torch.full((C,), c.tau, device=dev)
                strong = [strong_view(pool_ids[i], c.strong, rng) for i in ub]
                if c.softmatch:
                    loss_u = soft_consistency_loss(c.head_scale * head(embed(strong)), p_weak, w_u)
                    stats["mask"].append(w_u.mean())
                else:
                    thresholds.append(thr)  # (C,) this step's per-class bars, read once at the end
                    logits_s = c.head_scale * head(embed(strong))  # (U, C)
                    loss_u, mask = consistency_loss(logits_s, p_weak, thr)
                    if c.freematch and c.freematch_fairness > 0:  # FreeMatch's lambda_f * L_f, beside lambda_u's term
                        loss = loss + c.freematch_fairness * freematch_fairness_loss(logits_s, mask, fm_model, fm_hist)
                    stats["mask"].append(mask.float().mean())
                loss = loss + c.lambda_u * loss_u
                stats["loss_u"].append(loss_u.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if teacher is not None:
                teacher.update_parameters(student)
        body.eval()
        if teacher is not None and c.keep_teacher:  # the EMA weights become the body the head is refit on
            body.load_state_dict(teacher.module["body"].state_dict())
        if init_state is not None:  # WiSE-FT: part of the way back to the checkpoint (wise.py)
            body.load_state_dict(interpolate_weights(init_state, body.state_dict(), c.wise_alpha))
        read = {k: float(torch.stack(v).mean()) if v else float("nan") for k, v in stats.items()}  # one sync, at the end
        tuned = Path(out_dir) / ".body"
        save_tuned_body(body, tok, init_dir, tuned)
        report = super().fit(str(tuned), label_names, train, val_texts, val_labels, out_dir, max_epochs, log=lambda r: None)
        shutil.rmtree(tuned, ignore_errors=True)
        if c.frozen_weight > 0:  # the supervised core beside it: a plain probe on the body the fit started from
            # calibrate off: the blend mixes the two heads as fitted (the adapted one has no temperature either)
            frozen = Probe(ProbeConfig(**{**{f: getattr(c, f) for f in ProbeConfig.model_fields}, "calibrate": False}),
                           self.ctx, self.max_length)
            frozen.fit(init_dir, label_names, train, [], np.zeros(0, np.int64), str(Path(out_dir) / FROZEN_DIR))
            if len(val_texts):  # the validation score is the saved model's, the ensemble's
                from sklearn.metrics import f1_score

                pred = self.load(out_dir, label_names).predict_proba(list(val_texts)).argmax(1)
                report.val_pred = pred.tolist()
                report.val_macro_f1 = float(f1_score(val_labels, pred, average="macro",
                                                     labels=list(range(C)), zero_division=0))
        log({"epoch": 1, "train_loss": read["loss_s"], "val_macro_f1": report.val_macro_f1})
        report.seconds = time.perf_counter() - t0
        if not pool_ids:
            pool_note = " (no pool: the body finetuned on the labelled rows alone)"
        elif c.softmatch:
            pool_note = (f", consistency loss {read['loss_u']:.3f}, mean SoftMatch weight of a pool row {read['mask']:.2f} "
                         f"(running confidence at the last step: mean {float(sm_mu):.2f}, sd {float(sm_var) ** 0.5:.2f})")
        else:
            pool_note = (f", consistency loss {read['loss_u']:.3f}, pool rows above their threshold {read['mask']:.2f}"
                         + threshold_note(thresholds, label_names, c))
        report.notes.append(f"fixmatch: {c.steps} steps, {len(lab_ids)} labelled rows, {len(pool_ids)} pool rows; "
                            f"mean supervised loss {read['loss_s']:.3f}" + pool_note
                            + (f"; weak-view targets from a mean teacher (EMA decay {c.teacher_ema:g})"
                               + ("; the saved body is the teacher's" if c.keep_teacher else "") if teacher is not None else "")
                            + (f"; predictions blend the frozen probe at weight {c.frozen_weight:g}" if c.frozen_weight else ""))
        return report

    def meta(self) -> dict:
        return {"classifier": "fixmatch", "steps": self.config.steps, "mu": self.config.mu,
                "freematch": self.config.freematch, "teacher_ema": self.config.teacher_ema, "keep_teacher": self.config.keep_teacher,
                "wise_alpha": self.config.wise_alpha, "frozen_weight": self.config.frozen_weight}

    def load(self, model_dir: str, label_names: list[str]) -> TrainedClassifier:
        """The adapted model; with ``frozen_weight`` > 0 at fit time, its blend with the frozen probe."""
        import json

        adapted = super().load(model_dir, label_names)
        w = float(json.loads((Path(model_dir) / META_FILE).read_text()).get("frozen_weight") or 0)
        if w <= 0:
            return adapted
        frozen_dir = Path(model_dir) / FROZEN_DIR
        if not (frozen_dir / META_FILE).exists():
            raise ValueError(f"{model_dir} was saved with frozen_weight {w:g} but holds no {FROZEN_DIR}/ probe: the "
                             f"model dir is incomplete. Fix: copy the whole model dir, or train it again")
        return TrainedBlend(adapted, Probe.load(self, str(frozen_dir), label_names), w)


class TrainedBlend(TrainedClassifier):
    """(1 - w) * adapted + w * frozen class probabilities; the embeddings are the adapted body's."""

    def __init__(self, adapted: TrainedProbe, frozen: TrainedProbe, weight: float):
        self.adapted, self.frozen, self.weight = adapted, frozen, weight
        self.model_dir, self.label_names = adapted.model_dir, adapted.label_names

    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return self.adapted.embed(texts, batch_size)

    def predict_proba(self, texts: list[str], batch_size: int = 128, progress=None) -> np.ndarray:
        return self.score(texts, batch_size, progress=progress)[0]

    def score(self, texts, batch_size=128, embeddings=False, progress=None):
        p_a, e = self.adapted.score(texts, batch_size, embeddings=embeddings, progress=progress)  # (N, C), (N, H)
        p_f = self.frozen.predict_proba(texts, batch_size)  # (N, C)
        return ((1 - self.weight) * p_a + self.weight * p_f).astype(np.float32), e
