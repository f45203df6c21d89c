"""Training of the diffusion generator: from scratch, resumed, or fine-tuned."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from xtalloop.generators.diffusion.checkpoint import file_hash, read_checkpoint, save_checkpoint
from xtalloop.generators.diffusion.config import DiffusionConfig
from xtalloop.generators.diffusion.data import CrystalDataset
from xtalloop.generators.diffusion.diffusion import Schedules, diffusion_loss
from xtalloop.generators.diffusion.model import CrystalDenoiser

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, or ``auto`` (cuda when available) as a torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but CUDA is not available")
    return torch.device(name)


def _merge_counts(
    a: dict[int, dict[int, int]], b: dict[int, dict[int, int]]
) -> dict[int, dict[int, int]]:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        per = out.setdefault(int(k), {})
        for z, c in v.items():
            per[int(z)] = per.get(int(z), 0) + int(c)
    return out


@torch.no_grad()
def evaluate(
    model: CrystalDenoiser,
    dataset: CrystalDataset,
    config: DiffusionConfig,
    device: torch.device | str = "cpu",
    seed: int = 12345,
) -> float:
    """Mean denoising loss over ``dataset`` with fixed noise (comparable between epochs)."""
    schedules = Schedules.from_config(config.noise).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), config.train.batch_size):
        idx = torch.arange(start, min(start + config.train.batch_size, len(dataset)))
        loss, _ = diffusion_loss(
            model, dataset.get_batch(idx).to(device), schedules, config.noise, gen
        )
        total += float(loss) * len(idx)
        count += len(idx)
    model.train(was_training)
    return total / max(count, 1)


def train(
    config: DiffusionConfig,
    dataset: CrystalDataset,
    checkpoint_path: str | Path,
    *,
    val_dataset: CrystalDataset | None = None,
    resume_from: str | Path | None = None,
    finetune_from: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train the denoiser and write a checkpoint, a JSON log and a loss-curve PNG.

    Parameters
    ----------
    config
        Hyperparameters. When resuming or fine-tuning, the model and noise
        settings come from the checkpoint; the training settings from here.
    dataset
        Training crystals.
    checkpoint_path
        Where to write the checkpoint (``.pt``); the log goes to
        ``<stem>.log.json`` and the curve to ``<stem>.loss.png`` beside it.
    val_dataset
        Crystals whose loss (at fixed noise) is logged after every epoch.
    resume_from
        Continue this checkpoint's run (same data) up to ``config.train.epochs``,
        with its optimizer state, epoch and step.
    finetune_from
        Start from this checkpoint's weights on new data, at
        ``lr * finetune_lr_factor``, from epoch 0, recording it as the parent.
    progress
        Show a tqdm progress bar with the loss.

    Returns
    -------
    Path
        The checkpoint written.
    """
    from tqdm.auto import tqdm

    if resume_from is not None and finetune_from is not None:
        raise ValueError("give resume_from or finetune_from, not both")
    if len(dataset) == 0:
        raise ValueError("empty training set")
    checkpoint_path = Path(checkpoint_path)
    device = resolve_device(config.train.device)
    tc = config.train

    parent: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    start_epoch, step = 0, 0
    counts = dataset.formula_unit_counts()
    max_atoms = dataset.max_atoms
    lattice_abs_max = float(dataset.lattices.abs().max())
    lr = tc.lr
    base = read_checkpoint(resume_from or finetune_from) if (resume_from or finetune_from) else None
    if base is not None:
        stored = DiffusionConfig.model_validate(base["config"])
        config = config.model_copy(update={"model": stored.model, "noise": stored.noise})
    torch.manual_seed(tc.seed)
    model = CrystalDenoiser(config.model).to(device)

    if resume_from is not None:
        assert base is not None
        if base["data_hash"] != dataset.data_hash:
            raise ValueError(
                "resume_from checkpoint was trained on other data; use finetune_from instead"
            )
        model.load_state_dict(base["model_state"])
        parent = base.get("parent")
        history = list(base.get("history", []))
        step_losses = list(base.get("step_losses", []))
        start_epoch, step = int(base["epoch"]), int(base["step"])
        counts = {int(k): {int(z): c for z, c in v.items()} for k, v in base["formula_unit_counts"].items()}
    elif finetune_from is not None:
        assert base is not None
        model.load_state_dict(base["model_state"])
        lr = tc.lr * tc.finetune_lr_factor
        parent = {
            "path": str(Path(finetune_from).resolve()),
            "checkpoint_hash": file_hash(finetune_from),
            "data_hash": base["data_hash"],
            "epoch": int(base["epoch"]),
            "step": int(base["step"]),
        }
        counts = _merge_counts(base.get("formula_unit_counts", {}), counts)
        max_atoms = max(max_atoms, int(base.get("max_atoms", 0)))
        lattice_abs_max = max(lattice_abs_max, float(base.get("lattice_abs_max", 0.0)))

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
    if resume_from is not None and base is not None and "optimizer_state" in base:
        optimizer.load_state_dict(base["optimizer_state"])
    schedules = Schedules.from_config(config.noise).to(device)
    stopped_by = "epochs"

    def write(epoch: int) -> None:
        payload = {
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": optimizer.state_dict(),
            "config": config.model_dump(),
            "data_hash": dataset.data_hash,
            "n_train": len(dataset),
            "epoch": epoch,
            "step": step,
            "parent": parent,
            "history": history,
            "step_losses": step_losses,
            "formula_unit_counts": counts,
            "max_atoms": max_atoms,
            "lattice_abs_max": lattice_abs_max,
            "stopped_by": stopped_by,
            "device": str(device),
        }
        save_checkpoint(checkpoint_path, payload)
        _write_log(checkpoint_path, payload)

    n_batches = (len(dataset) + tc.batch_size - 1) // tc.batch_size
    total_steps = max(0, tc.epochs - start_epoch) * n_batches
    bar = tqdm(total=total_steps, disable=not progress, desc="diffusion", dynamic_ncols=True)
    t0 = time.monotonic()
    epoch = start_epoch
    model.train()
    while epoch < tc.epochs:
        shuffle = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
        noise_gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_033 + epoch)
        order = torch.randperm(len(dataset), generator=shuffle)
        sums = {"loss": 0.0, "lattice": 0.0, "coord": 0.0}
        n_done = 0
        for start in range(0, len(dataset), tc.batch_size):
            batch = dataset.get_batch(order[start : start + tc.batch_size]).to(device)
            loss, parts = diffusion_loss(model, batch, schedules, config.noise, noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            step += 1
            n_done += 1
            value = float(loss)
            step_losses.append(value)
            sums["loss"] += value
            sums["lattice"] += parts["lattice"]
            sums["coord"] += parts["coord"]
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
            if tc.max_time_s is not None and time.monotonic() - t0 > tc.max_time_s:
                stopped_by = "time_box"
                break
        if stopped_by == "time_box" and n_done < n_batches:
            logger.info("time box reached within epoch %d after %d steps", epoch + 1, n_done)
            break
        epoch += 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            **{k: v / max(n_done, 1) for k, v in sums.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": round(time.monotonic() - t0, 2),
        }
        if val_dataset is not None and len(val_dataset):
            record["val_loss"] = evaluate(model, val_dataset, config, device)
            model.train()
        history.append(record)
        if tc.save_every and epoch % tc.save_every == 0:
            write(epoch)
        if stopped_by == "time_box":
            break
    bar.close()
    write(epoch)
    return checkpoint_path


def _write_log(checkpoint_path: Path, payload: dict[str, Any]) -> None:
    """JSON log and loss-curve PNG beside the checkpoint."""
    stem = checkpoint_path.with_suffix("")
    log = {
        k: payload[k]
        for k in (
            "config", "data_hash", "n_train", "epoch", "step", "parent", "history",
            "stopped_by", "device", "max_atoms", "lattice_abs_max",
        )
    }
    log["formula_unit_counts"] = {str(k): v for k, v in payload["formula_unit_counts"].items()}
    Path(f"{stem}.log.json").write_text(json.dumps(log, indent=1, default=str))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    losses = payload["step_losses"]
    if losses:
        ax.plot(range(1, len(losses) + 1), losses, lw=0.5, alpha=0.4, label="step loss")
    history = payload["history"]
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], "o-", ms=2,
                label="epoch mean")
        if any("val_loss" in h for h in history):
            ax.plot([h["step"] for h in history if "val_loss" in h],
                    [h["val_loss"] for h in history if "val_loss" in h], "s-", ms=2,
                    label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"diffusion training, epoch {payload['epoch']}")
    fig.tight_layout()
    fig.savefig(f"{stem}.loss.png", dpi=100)
    plt.close(fig)
