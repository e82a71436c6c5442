"""Train a tile autoencoder: one process, or several under torchrun (DDP).

    tessera train --model dcae-s48 --data data/dcss --out runs/dcae-s48
    torchrun --nproc_per_node=2 -m training.train --model dcae-t48 --out runs/ddp
    tessera train --out runs/dcae-s48 --resume          # continue exactly where it stopped

The seed's recipe: L1 loss (plus a small latent regulariser), AdamW, a cosine schedule over
max_inputs / batch_size steps, batch 64. Every ``eval_every`` inputs the model is validated in
eval mode and the run folder gets ``last.safetensors`` and ``last.state.pt`` (the resumable
state), and ``best.safetensors`` when validation L1 improved. All writes are atomic.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

import model as models
from training.atomic import atomic_write_text
from training.config import FIELDS, RUN_KEYS, TrainConfig, default_lr, structure_weight
from training.dataset import TileData, TileDataset, keep_batch
from training.errors import TrainingError
from training.logs import CsvLog, TensorBoardLog
from training.losses import latent_regulariser, training_loss
from training.metrics import SUMS, metrics_from_sums, reconstruction_sums
from training.state import load_state, rng_state, save_state, set_rng_state

TRAIN_FIELDS = ["step", "inputs", "loss", "lr", "inputs_per_s", "elapsed_s"]
METRICS = ["val_l1", "val_mse", "val_psnr", "val_ssim"]
SOURCE_METRICS = ["l1", "psnr", "ssim"]  # per validation source, as <source>_<metric>
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Processes:
    """Where this process runs and which share of the work is its own."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device: str) -> Processes:
    """Pick the device; join the process group when started by torchrun (RANK in the environment)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world == 1:
        return Processes(0, 1, torch.device("cuda" if cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Processes(rank, world, torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


class WithLatent(nn.Module):
    """forward(x) -> (x_hat, z): the latent is needed for the regulariser, and DDP only syncs
    gradients of what goes through the wrapped module's forward."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.autoencoder.encode(x)
        return self.autoencoder.decode(z), z


class SkipSampler(Sampler):
    """The indices of ``sampler`` after the first ``skip``: resuming in the middle of an epoch."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class StopRequest:
    """SIGINT/SIGTERM ask the run to stop at the next step boundary and save; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.asked = False
        self._previous = {}

    def _handle(self, signum, frame):
        self.asked = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def git_revision() -> dict:
    """Commit of the code that trains (and whether it had local changes), when it is a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def all_sum(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def schedule(total_steps: int, warmup_steps: int):
    """Learning-rate factor per step: linear warm-up to 1 over ``warmup_steps``, then cosine to 0
    at ``total_steps`` (with no warm-up, torch's CosineAnnealingLR)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def ema_of(module: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``module``'s weights and buffers (BatchNorm statistics
    too). The decay ramps up as ``(1 + n) / (10 + n)`` until it reaches ``decay``, so the average
    is not dominated by the random initial weights in a short run."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        n = int(count)
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - min(decay, (1 + n) / (10 + n)))
        for a, c in zip(averaged, current):
            if not a.is_floating_point():  # BatchNorm's count of batches
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(module, multi_avg_fn=update, use_buffers=True)


def val_fields(sources: list[str], ema: bool) -> list[str]:
    per_source = [f"{src}_{m}" for src in sources for m in SOURCE_METRICS] if len(sources) > 1 else []
    raw = [f"raw_{m}" for m in METRICS + per_source] if ema else []
    return ["step", "inputs", *METRICS, *per_source, *raw, "best"]


def validate(module: nn.Module, val_tiles: dict[str, torch.Tensor], procs: Processes, autocast) -> dict[str, float]:
    """Metrics over all validation tiles (pooled), and per source when there are several."""
    sums = torch.stack([reconstruction_sums(module, tiles, 256, procs.device, autocast) if len(tiles)
                        else torch.zeros(SUMS, dtype=torch.float64, device=procs.device)
                        for tiles in val_tiles.values()])
    sums = all_sum(sums, procs)
    metrics = metrics_from_sums(*sums.sum(0).tolist())
    for src, row in zip(val_tiles, sums.tolist() if len(val_tiles) > 1 else []):
        one = metrics_from_sums(*row)
        metrics.update({f"{src}_{m}": one[f"val_{m}"] for m in SOURCE_METRICS})
    return metrics


def train(config: TrainConfig, given: frozenset[str] | None = None) -> dict:
    """Run (or resume) training as ``config`` says; return a summary of where it ended.

    Args:
        config: the run's settings.
        given: the settings the user set explicitly; on resume the others come from the run.
            None means all of them.

    Returns:
        {"out", "step", "inputs_seen", "metrics", "best_val_l1", "stopped"}.
    """
    procs = start_processes(config.device)
    try:
        return _train(config, given, procs)
    finally:
        if procs.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, given: frozenset[str] | None, procs: Processes) -> dict:
    out = Path(config.out)
    state_path = out / "last.state.pt"
    cuda = procs.device.type == "cuda"
    if config.threads:
        torch.set_num_threads(config.threads)

    # ---- resume: settings come from the run; ones given now replace them, except the ones
    # that shape the weights (RUN_KEYS), which must not change
    state, commands = None, [config.command]
    if config.resume:
        state = load_state(state_path)
        saved = {k: v for k, v in state["config"].items() if k in FIELDS}
        given = frozenset(FIELDS) if given is None else given
        clash = [
            f"--{k.replace('_', '-')} {getattr(config, k)!r} (run has {saved[k]!r})"
            for k in RUN_KEYS
            if k in given and getattr(config, k) is not None and getattr(config, k) != saved[k]
        ]
        if clash:
            raise TrainingError(
                f"cannot resume {out} with different settings: {'; '.join(clash)}; drop them or start a new --out"
            )
        now = {k: getattr(config, k) for k in given if k not in RUN_KEYS}
        config = TrainConfig(**{**saved, **now, "resume": True, "out": config.out,
                                "stop_after": config.stop_after, "command": config.command})
        commands = [*state["commands"], config.command]
    elif state_path.exists():
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    # ---- data
    data = TileData.open(config.data)
    if state is not None and state["data"]["manifest_sha256"] != data.manifest_sha256:
        raise TrainingError(
            f"cannot resume: {config.data} is not the data set this run was trained on (manifest differs)"
        )
    train_set = TileDataset(data.split("train"), augment=config.augment, seed=config.seed)
    val_tiles = {src: torch.from_numpy(tiles).permute(0, 3, 1, 2)[procs.rank :: procs.world].contiguous()
                 for src, tiles in data.val_sources().items()}
    if config.batch_size % procs.world:
        raise TrainingError(f"--batch-size {config.batch_size} does not split evenly over {procs.world} processes")
    local_batch = config.batch_size // procs.world
    if len(train_set) < config.batch_size:
        raise TrainingError(
            f"{config.data} has {len(train_set)} training tiles, fewer than one batch of {config.batch_size}"
        )
    sampler = DistributedSampler(train_set, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=config.seed)
    steps_per_epoch = len(sampler) // local_batch
    total_steps = math.ceil(config.max_inputs / config.batch_size)

    # ---- model, optimizer, schedule
    torch.manual_seed(config.seed)
    try:
        autoencoder = models.build(config.model)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    config = replace(config, lr=config.lr if config.lr is not None else default_lr(autoencoder.arch))
    settings = {k: getattr(config, k) for k in RUN_KEYS}
    autoencoder.to(procs.device)
    if cuda:
        autoencoder.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.AdamW(
        autoencoder.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None
    )
    warmup_steps = math.ceil(config.warmup / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total_steps, warmup_steps))
    ema = ema_of(autoencoder, config.ema) if config.ema else None
    weight = structure_weight(config)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    step, elapsed, best = 0, 0.0, None
    if state is not None:
        autoencoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, elapsed, best = state["step"], state["elapsed_s"], state["best_val_l1"]
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(config.seed + procs.rank)
    net = WithLatent(autoencoder)
    if procs.world > 1:
        net = DistributedDataParallel(net, device_ids=[procs.device.index] if cuda else None)
    net.train()

    # ---- logs and the record every checkpoint carries (main process only)
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        train_log = CsvLog(out / "train.csv", TRAIN_FIELDS, keep_until_step=step)
        val_log = CsvLog(out / "val.csv", val_fields(list(val_tiles), ema is not None), keep_until_step=step)
        board = None
        if config.tensorboard:
            board = TensorBoardLog(out / "tb", resume_step=step * config.batch_size if state else None)
    record = {
        "command": commands[0],
        "resumed_with": commands[1:],
        **git_revision(),
        "data": data.describe(),
        **settings,
        "spec": autoencoder.spec,
        "loss": config.loss if config.loss == "l1" else f"{config.loss} (weight {weight:g})",
        "optimizer": "AdamW",
        "schedule": (f"linear warm-up over {warmup_steps} steps, then " if warmup_steps else "")
        + f"cosine over {total_steps} steps",
        "weights": f"EMA (decay {config.ema:g})" if ema is not None else "last step",
        "world_size": procs.world,
        "device": procs.device.type,
        "precision": "bf16 autocast" if cuda else "fp32",
        "torch": torch.__version__,
    }
    if procs.main and state is None:
        atomic_write_text(out / "run.json", json.dumps(record, indent=2) + "\n")

    def save(metrics: dict[str, float], is_best: bool) -> None:
        training = {**record, "step": step, "inputs_seen": step * config.batch_size, "elapsed_s": round(elapsed, 1),
                    "metrics": metrics}
        dtype = DTYPES[config.checkpoint_dtype]
        shipped = ema.module if ema is not None else autoencoder
        if is_best:
            models.save_checkpoint(shipped, out / "best.safetensors", {**training, "checkpoint": "best"}, dtype)
        models.save_checkpoint(shipped, out / "last.safetensors", {**training, "checkpoint": "last"}, dtype)
        save_state(state_path, {
            "step": step, "inputs_seen": step * config.batch_size, "elapsed_s": elapsed, "best_val_l1": best,
            "config": asdict(config), "commands": commands,
            "data": {"manifest_sha256": data.manifest_sha256},
            "model": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in autoencoder.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
            **({"ema": ema.state_dict()} if ema is not None else {}),
        })

    # ---- the loop
    eval_steps = max(1, config.eval_every // config.batch_size)
    stop_inputs = min(config.stop_after or math.inf, total_steps * config.batch_size)
    bar = tqdm(total=total_steps * config.batch_size, initial=step * config.batch_size, unit=" inputs",
               unit_scale=True, dynamic_ncols=True, disable=not (procs.main and config.progress), smoothing=0.05)
    loss_sum = torch.zeros((), device=procs.device)
    nonfinite = torch.zeros((), device=procs.device)
    logged_step, logged_time, metrics, stopped = step, time.perf_counter(), None, None
    loader_generator = torch.Generator()  # the loader's own seed draws leave the global generator alone
    with StopRequest() as stop, contextlib.ExitStack() as closing:
        closing.callback(bar.close)
        if procs.main:
            closing.callback(train_log.close)
            closing.callback(val_log.close)
            if board:
                closing.callback(board.close)
        while stopped is None:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            loader = DataLoader(
                train_set, batch_size=local_batch, sampler=SkipSampler(sampler, offset * local_batch), drop_last=True,
                collate_fn=keep_batch, num_workers=config.num_workers, pin_memory=cuda, generator=loader_generator,
            )
            for x in loader:
                x = x.to(procs.device, non_blocking=True)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    x_hat, z = net(x)
                loss = training_loss(x_hat.float(), x, config.loss, weight)
                if config.latent_reg:
                    loss = loss + config.latent_reg * latent_regulariser(z.float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(autoencoder)
                step += 1
                loss_sum += loss.detach()
                nonfinite += (~torch.isfinite(loss.detach())).float()
                bar.update(config.batch_size)

                inputs = step * config.batch_size
                eval_due = step % eval_steps == 0 or step >= total_steps or inputs >= stop_inputs
                if step % config.log_every == 0 or eval_due or (stop.asked and procs.world == 1):
                    # one all-reduce tells every process the mean loss, a non-finite loss and a stop request
                    flags = torch.tensor([float(stop.asked), float(step - logged_step)], device=procs.device)
                    shared = all_sum(torch.cat([torch.stack([loss_sum, nonfinite]), flags]), procs)
                    mean_loss, bad, asked, steps = shared.tolist()
                    if bad:
                        kept = (f"the last good checkpoint {out / 'last.safetensors'} is kept" if state_path.exists()
                                else "no checkpoint was written yet")
                        raise TrainingError(
                            f"loss is not finite (nan/inf) at step {step} ({inputs:,} inputs); stopped without saving: "
                            f"{kept}; try a lower --lr"
                        )
                    now = time.perf_counter()
                    elapsed += now - logged_time
                    rate = (step - logged_step) * config.batch_size / max(now - logged_time, 1e-9)
                    row = {"step": step, "inputs": inputs, "loss": mean_loss / steps, "lr": scheduler.get_last_lr()[0],
                           "inputs_per_s": round(rate, 1), "elapsed_s": round(elapsed, 1)}
                    if procs.main:
                        train_log.write(row)
                        if board:
                            board.write(inputs, {"loss": row["loss"], "lr": row["lr"], "inputs_per_s": rate}, "train")
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
                    loss_sum.zero_()
                    logged_step, logged_time = step, now
                    if asked:
                        stopped, eval_due = "signal", True
                if step >= total_steps:
                    stopped = "done"
                elif inputs >= stop_inputs:
                    stopped = "stop_after"

                if eval_due:
                    tock = time.perf_counter()
                    val_autocast = autocast if cuda else None
                    metrics = validate(ema.module if ema is not None else autoencoder, val_tiles, procs, val_autocast)
                    if ema is not None:
                        raw = validate(autoencoder, val_tiles, procs, val_autocast)
                        metrics.update({f"raw_{k}": v for k, v in raw.items()})
                    if not all(math.isfinite(v) for k, v in metrics.items() if k.endswith(("l1", "mse"))):
                        raise TrainingError(
                            f"validation metrics are not finite at step {step}; stopped without saving; "
                            f"try a lower --lr"
                        )
                    is_best = best is None or metrics["val_l1"] < best
                    best = metrics["val_l1"] if is_best else best
                    if procs.main:
                        val_log.write({"step": step, "inputs": inputs, **metrics, "best": int(is_best)})
                        if board:
                            board.write(inputs, metrics, "val")
                        bar.write(f"step {step} ({inputs:,} inputs): val L1 {metrics['val_l1']:.5f} "
                                  f"MSE {metrics['val_mse']:.6f} PSNR {metrics['val_psnr']:.2f} dB "
                                  f"SSIM {metrics['val_ssim']:.4f}"
                                  + (" (best)" if is_best else ""))
                        save(metrics, is_best)
                    logged_time += time.perf_counter() - tock  # validation time is not training time
                if stopped:
                    break
    return {"out": str(out), "step": step, "inputs_seen": step * config.batch_size, "metrics": metrics,
            "best_val_l1": best, "stopped": stopped}


def main(argv: list[str] | None = None) -> int:
    """`python -m training.train ...`, the same as `tessera train ...` (handy under torchrun)."""
    import argparse

    from training.cli import add_train_arguments, friendly, run_train

    parser = argparse.ArgumentParser(prog="python -m training.train", description="Train a tile autoencoder.")
    add_train_arguments(parser)
    return friendly("train", run_train)(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
