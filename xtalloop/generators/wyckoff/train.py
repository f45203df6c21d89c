"""Training the Wyckoff model: teacher-forced likelihood of every decision, in a time box."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from xtalloop.generators.wyckoff.data import Example, collate, to_example
from xtalloop.generators.wyckoff.model import (
    MAX_FORMULA_UNITS,
    WyckoffModel,
    WyckoffModelConfig,
)
from xtalloop.generators.wyckoff.sites import WyckoffCrystal
from xtalloop.generators.wyckoff.skeletons import build_bank, dump_bank

logger = logging.getLogger(__name__)


@dataclass
class WyckoffTrainConfig:
    """Optimiser settings; ``minutes`` stops training early (the recipe's time box)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    minutes: float | None = None
    val_fraction: float = 0.05
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def losses(model: WyckoffModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean negative log-likelihood of each kind of decision in ``batch``."""
    comp = model.encode_composition(batch["z"], batch["amount"], batch["comp_mask"])
    group_loss = F.cross_entropy(model.group_logits(comp), batch["group"] - 1)
    units_loss = F.cross_entropy(model.units_logits(comp, batch["group"]),
                                 (batch["units"] - 1).clamp(max=MAX_FORMULA_UNITS - 1))
    hidden = model.decode(comp, batch["group"], batch["units"], batch["prev_wp"],
                          batch["prev_coord"], batch["cur_z"], batch["remaining"],
                          batch["seq_mask"])
    logits = model.site_logits(hidden, batch["group"]).masked_fill(~batch["allowed"], -1e4)
    sites = batch["site_mask"]
    local = batch["target_wp"] - model.wp_offset[batch["group"]][:, None]
    site_loss = F.cross_entropy(logits[sites], local[sites])
    coord_logits = model.coord_logits(hidden, batch["target_wp"])
    n_bins = model.config.n_bins
    bins = (batch["target_free"] * n_bins).long().clamp(0, n_bins - 1)
    axes = torch.arange(3, device=hidden.device)
    free = (axes[None, None] < batch["n_free"][..., None]) & sites[..., None]
    coord_loss = F.cross_entropy(coord_logits[free], bins[free]) if free.any() \
        else hidden.sum() * 0
    end = hidden[torch.arange(len(hidden), device=hidden.device), batch["end"]]
    mean, log_std = model.lattice_params(end)
    lattice_loss = (0.5 * ((batch["lattice"] - mean) / log_std.exp()) ** 2 + log_std).mean()
    return {"group": group_loss, "units": units_loss, "sites": site_loss,
            "coords": coord_loss, "lattice": lattice_loss}


def train_wyckoff(crystals: list[WyckoffCrystal], out: str | Path,
                  model_config: WyckoffModelConfig | None = None,
                  train_config: WyckoffTrainConfig | None = None,
                  metadata: dict[str, Any] | None = None,
                  progress: bool = True, parent: str | Path | None = None) -> dict[str, Any]:
    """Train a Wyckoff model on ``crystals`` and write its checkpoint to ``out``.

    The best epoch on a held-out share of the crystals is kept. Returns the
    training log (per-epoch losses, time, sizes), which is stored in the
    checkpoint too. With ``parent`` (a Wyckoff checkpoint) training starts from
    its weights and settings (fine-tuning; ``model_config`` is then ignored).
    """
    from xtalloop.generators.wyckoff.checkpoint import load_wyckoff, save_wyckoff

    loaded_parent = load_wyckoff(parent) if parent is not None else None
    parent_model = loaded_parent.model if loaded_parent is not None else None
    if parent_model is not None:
        model_config = parent_model.config
    model_config = model_config or WyckoffModelConfig()
    train_config = train_config or WyckoffTrainConfig()
    torch.manual_seed(train_config.seed)
    rng = np.random.default_rng(train_config.seed)
    examples = [e for e in (to_example(c, model_config.max_sites) for c in crystals) if e]
    if len(examples) < 2:
        from xtalloop.errors import DataError

        raise DataError(f"training needs at least 2 usable crystals, got {len(examples)}")
    order = rng.permutation(len(examples))
    n_val = min(len(examples) - 1, max(1, int(len(examples) * train_config.val_fraction)))
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    device = torch.device(train_config.device)
    model = WyckoffModel(model_config)
    if parent_model is not None:
        model.load_state_dict(parent_model.state_dict())
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                            weight_decay=train_config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / train_config.batch_size)
    total = steps_per_epoch * train_config.epochs
    start = time.monotonic()
    log: dict[str, Any] = {"n_train": len(train), "n_val": len(val), "epochs": [],
                           "n_crystals": len(crystals),
                           "parent": None if parent is None else str(parent)}
    best, best_state = math.inf, None
    if parent_model is not None:  # fine-tuning must beat where it started
        best = sum(evaluate(model, val, train_config.batch_size).values())
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log["parent_val_loss"] = round(best, 4)
    budget = None if train_config.minutes is None else 60 * train_config.minutes
    step = 0
    for epoch in range(train_config.epochs):
        model.train()
        totals: dict[str, float] = {}
        for chunk in batches(train, train_config.batch_size, rng):
            batch = _to(collate([train[i] for i in chunk]), device)
            parts = losses(model, batch)
            loss = sum(parts.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            elapsed = time.monotonic() - start
            done = max(step / total, elapsed / budget if budget else 0.0)
            for group in opt.param_groups:
                group["lr"] = learning_rate(train_config.lr, step, total, done)
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) / steps_per_epoch
        val_parts = evaluate(model, val, train_config.batch_size)
        val_loss = sum(val_parts.values())
        elapsed = time.monotonic() - start
        log["epochs"].append({"epoch": epoch + 1, "seconds": round(elapsed, 1),
                              "train": {k: round(v, 4) for k, v in totals.items()},
                              "val": {k: round(v, 4) for k, v in val_parts.items()}})
        if progress:
            print(f"  epoch {epoch + 1}/{train_config.epochs}  {elapsed / 60:.1f} min  train "
                  f"{sum(totals.values()):.3f}  val {val_loss:.3f}  ("
                  + ", ".join(f"{k} {v:.2f}" for k, v in val_parts.items()) + ")", flush=True)
        if val_loss < best:
            best = val_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            log["best_epoch"] = epoch + 1
            log["improved"] = True
        if budget is not None and time.monotonic() - start > budget:
            log["stopped"] = f"time box of {train_config.minutes} min"
            break
    log["seconds"] = round(time.monotonic() - start, 1)
    log["best_val_loss"] = round(best, 4)
    model.load_state_dict(best_state)
    model.to("cpu")
    bank = build_bank(crystals, start=loaded_parent.skeletons if loaded_parent else None)
    log["skeletons"] = len(bank)
    save_wyckoff(out, model, {**(metadata or {}), "training": log,
                              "skeletons": dump_bank(bank),
                              "train_config": vars(train_config),
                              "max_atoms": max(_largest_cell(crystals), loaded_parent.max_atoms
                                               if loaded_parent else 0)})
    return log


def batches(examples: list[Example], batch_size: int,
            rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of similar sequence length (less padding: about 2x faster on CPU).

    Examples are shuffled, cut into pools of 32 batches, sorted by length within
    a pool and batched; the batches are shuffled again.
    """
    order = rng.permutation(len(examples))
    pool = 32 * batch_size
    out = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(examples[i].wp))
        out += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def learning_rate(peak: float, step: int, total: int, progress: float) -> float:
    """Linear warm-up over 3 % of the steps, then cosine decay to 2 % of ``peak``.

    ``progress`` is the larger of the share of steps done and the share of the
    time box used, so a time-boxed run still ends annealed.
    """
    warmup = max(1, int(0.03 * total))
    if step < warmup:
        return peak * step / warmup
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def evaluate(model: WyckoffModel, examples: list[Example], batch_size: int) -> dict[str, float]:
    """Mean validation losses per decision kind."""
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for k in range(0, len(examples), batch_size):
        chunk = examples[k:k + batch_size]
        parts = losses(model, _to(collate(chunk), next(model.parameters()).device))
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(chunk)
        n += len(chunk)
    return {k: v / n for k, v in totals.items()}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _largest_cell(crystals: list[WyckoffCrystal]) -> int:
    """Largest primitive cell among the training crystals."""
    from xtalloop.generators.wyckoff.tables import wyckoff_table

    centering = wyckoff_table().centering
    return max(c.n_atoms // int(centering[c.space_group]) for c in crystals)


def write_log(log: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(log, indent=1))
