"""Train a tile autoencoder: one process, or several under torchrun (DDP).

    tessera train --model dcae-s48 --data data/dcss --out runs/dcae-s48
    torchrun --nproc_per_node=2 -m tessera.training.train --model dcae-t48 --out runs/ddp
    tessera train --out runs/dcae-s48 --resume          # continue exactly where it stopped

The original recipe: L1 loss (plus a small latent regulariser), AdamW, a cosine schedule over
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from tessera import model as models
from tessera.model.presets import parse_spec
from tessera.training.atomic import atomic_write_text
from tessera.training.config import DEFAULTS, FIELDS, RUN_KEYS, TrainConfig, default_lr, structure_weight, warmup_steps
from tessera.training.dataset import TileData, TileDataset, keep_batch
from tessera.training.errors import TrainingError
from tessera.training.logs import CsvLog, TensorBoardLog
from tessera.training.losses import latent_regulariser, rgba_loss, training_loss
from tessera.training.metrics import SUMS, metrics_from_sums, reconstruction_sums, rgba_metrics_from_sums
from tessera.training.state import load_state, rng_state, save_state, set_rng_state

TRAIN_FIELDS = ["step", "inputs", "loss", "lr", "inputs_per_s", "elapsed_s"]
METRICS = ["val_l1", "val_mse", "val_psnr", "val_ssim"]
RGBA_METRICS = ["val_alpha_iou", "val_covered_psnr"]  # RGBA models only
SOURCE_METRICS = ["l1", "psnr", "ssim"]  # per validation source, as <source>_<metric>
SOURCE_RGBA_METRICS = ["alpha_iou", "covered_psnr"]
STATE = "last.state.pt"
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


def val_fields(sources: list[str], ema: bool, rgba: bool = False) -> list[str]:
    overall = METRICS + (RGBA_METRICS if rgba else [])
    per_source = [f"{src}_{m}" for src in sources for m in SOURCE_METRICS + (SOURCE_RGBA_METRICS if rgba else [])]
    per_source = per_source if len(sources) > 1 else []
    raw = [f"raw_{m}" for m in overall + per_source] if ema else []
    return ["step", "inputs", *overall, *per_source, *raw, "best"]


def validate(module: nn.Module, val_tiles: dict[str, torch.Tensor], procs: Processes, autocast,
             rgba: bool = False) -> dict[str, float]:
    """Metrics over all validation tiles (pooled), and per source when there are several. For
    RGBA models the L1/MSE/PSNR/SSIM compare the colours multiplied by alpha, as RGB models do,
    and alpha IoU and the colour PSNR over covered pixels are added."""
    rows = [reconstruction_sums(module, tiles, 256, procs.device, autocast, rgba) for tiles in val_tiles.values()]
    sums = all_sum(torch.stack(rows), procs)

    def named(row: list[float]) -> dict[str, float]:
        found = metrics_from_sums(*row[:SUMS])
        if rgba:
            found.update({f"val_{k}": v for k, v in rgba_metrics_from_sums(*row[SUMS:]).items()})
        return found

    metrics = named(sums.sum(0).tolist())
    for src, row in zip(val_tiles, sums.tolist() if len(val_tiles) > 1 else []):
        one = named(row)
        metrics.update({f"{src}_{m}": one[f"val_{m}"] for m in SOURCE_METRICS + (SOURCE_RGBA_METRICS if rgba else [])})
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
    check_requirements(config)
    procs = start_processes(config.device)
    try:
        summary = _train(config, given, procs)
        if procs.world > 1:  # leave the group together: a process that tears its end down while rank 0
            dist.barrier()   # still writes the last checkpoint can abort in gloo's teardown
        return summary
    finally:
        if procs.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Run:
    """Everything a run holds while it trains; ``step`` counts optimizer steps."""

    config: TrainConfig
    procs: Processes
    out: Path
    commands: list[str]
    data: TileData
    train_set: TileDataset
    val_tiles: dict[str, torch.Tensor]  # this process's share, per source, uint8 (N, C, 32, 32)
    rgba: bool  # a 4-channel model: RGBA tiles, coverage-weighted loss, alpha metrics
    autoencoder: nn.Module
    net: nn.Module  # what the step calls: WithLatent, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.optim.swa_utils.AveragedModel | None
    sampler: DistributedSampler
    local_batch: int
    total_steps: int
    record: dict = field(default_factory=dict)  # what every checkpoint carries
    step: int = 0
    elapsed: float = 0.0
    best: float | None = None

    @property
    def cuda(self) -> bool:
        return self.procs.device.type == "cuda"

    @property
    def inputs(self) -> int:
        return self.step * self.config.batch_size

    @property
    def mse_from(self) -> int:
        """The first step of the MSE phase (``total_steps`` when there is none)."""
        return self.total_steps - round(self.config.mse_phase * self.total_steps)

    @property
    def shipped(self) -> nn.Module:
        """The weights the checkpoints hold: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.autoencoder

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()


def check_requirements(config: TrainConfig) -> None:
    """Fail before the first step, not at the first validation, when a package the run needs is
    missing: torchmetrics (SSIM, every validation and ``--loss l1+ssim``) and, unless
    ``--no-tensorboard``, tensorboard."""
    import importlib.util

    needed = ["torchmetrics"] + (["tensorboard"] if config.tensorboard else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise TrainingError(f"tessera train needs {', '.join(missing)}: install the train extra "
                            "(pip install -e '.[train]')" + ("" if "torchmetrics" in missing else ", or pass --no-tensorboard"))


def resume_settings(config: TrainConfig, given: frozenset[str] | None) -> tuple[TrainConfig, dict | None, list[str]]:
    """On resume, the run's saved settings with the ones given now on top, except those that
    shape the weights (RUN_KEYS), which must not change; the state and the commands so far."""
    state_path = Path(config.out) / STATE
    if not config.resume:
        if state_path.exists():
            raise TrainingError(f"{config.out} already holds a run; pass --resume to continue it or choose another --out")
        return config, None, [config.command]
    state = load_state(state_path)
    saved = {k: v for k, v in state["config"].items() if k in FIELDS}
    given = frozenset(FIELDS) if given is None else given
    clash = [
        f"--{k.replace('_', '-')} {getattr(config, k)!r} (run has {saved[k]!r})"
        for k in RUN_KEYS
        if k in given and getattr(config, k) is not None and getattr(config, k) != saved.get(k, DEFAULTS[k])
    ]
    if clash:
        raise TrainingError(
            f"cannot resume {config.out} with different settings: {'; '.join(clash)}; drop them or start a new --out"
        )
    now = {k: getattr(config, k) for k in given if k not in RUN_KEYS}
    resumed = TrainConfig(**{**saved, **now, "resume": True, "out": config.out, "stop_after": config.stop_after,
                             "command": config.command})
    return resumed, state, [*state["commands"], config.command]


def open_data(config: TrainConfig, procs: Processes, state: dict | None, rgba: bool):
    """The training set, this process's validation tiles per source, and the data set."""
    data = TileData.open(config.data)
    if state is not None and state["data"]["manifest_sha256"] != data.manifest_sha256:
        raise TrainingError(f"cannot resume: {config.data} is not the data set this run was trained on (manifest differs)")
    if rgba and not data.has_rgba:
        raise TrainingError(f"{config.data} holds no RGBA tiles for this 4-channel model; build it with `tessera data corpus`")
    train_set = TileDataset(data.split("train/rgba" if rgba else "train"), augment=config.augment, seed=config.seed)
    sources = data.sources_of("val", rgba=rgba)
    val_tiles = {src: torch.from_numpy(tiles).permute(0, 3, 1, 2)[procs.rank :: procs.world].contiguous()
                 for src, tiles in sources.items()}
    if config.batch_size % procs.world:
        raise TrainingError(f"--batch-size {config.batch_size} does not split evenly over {procs.world} processes")
    if len(train_set) < config.batch_size:
        raise TrainingError(f"{config.data} has {len(train_set)} training tiles, fewer than one batch of {config.batch_size}")
    return data, train_set, val_tiles


def build_model(config: TrainConfig, procs: Processes, state: dict | None, total_steps: int):
    """The network (seeded), its optimizer, schedule and EMA, restored from ``state`` on resume;
    and the config with the learning rate filled in."""
    cuda = procs.device.type == "cuda"
    torch.manual_seed(config.seed)
    try:
        autoencoder = models.build(config.model)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    config = replace(config, lr=config.lr if config.lr is not None else default_lr(autoencoder.arch))
    autoencoder.to(procs.device).to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=cuda or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total_steps, warmup_steps(config)))
    ema = ema_of(autoencoder, config.ema) if config.ema else None
    if state is not None:
        autoencoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(config.seed + procs.rank)
    net = WithLatent(autoencoder)
    if procs.world > 1:
        net = DistributedDataParallel(net, device_ids=[procs.device.index] if cuda else None)
    net.train()
    return config, autoencoder, net, optimizer, scheduler, ema


def prepare(config: TrainConfig, procs: Processes, state: dict | None, commands: list[str]) -> Run:
    """Data, model and record of a run, at step 0 or where ``state`` left it."""
    try:
        rgba = parse_spec(config.model)[1].in_channels == 4
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    data, train_set, val_tiles = open_data(config, procs, state, rgba)
    total_steps = math.ceil(config.max_inputs / config.batch_size)
    config, autoencoder, net, optimizer, scheduler, ema = build_model(config, procs, state, total_steps)
    sampler = DistributedSampler(train_set, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=config.seed)
    run = Run(config, procs, Path(config.out), commands, data, train_set, val_tiles, rgba, autoencoder, net, optimizer,
              scheduler, ema, sampler, config.batch_size // procs.world, total_steps)
    if state is not None:
        run.step, run.elapsed, run.best = state["step"], state["elapsed_s"], state["best_val_l1"]
    run.record = describe_run(run)
    if procs.main:  # a resume rewrites it: its commands and code revision are the checkpoints' from then on
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.out / "run.json", json.dumps(run.record, indent=2) + "\n")
    return run


def describe_run(run: Run) -> dict:
    config, weight = run.config, structure_weight(run.config)
    warmup = warmup_steps(config)
    rgba = f"rgba (coverage-weighted L1 + {config.alpha_weight:g} x alpha L1)"
    loss = rgba if run.rgba else config.loss
    return {
        "command": run.commands[0],
        "resumed_with": run.commands[1:],
        **git_revision(),
        "data": run.data.describe(),
        **{k: getattr(config, k) for k in RUN_KEYS},
        "spec": run.autoencoder.spec,
        "channels": "RGBA" if run.rgba else "RGB",
        "loss": (loss if loss in ("l1", rgba) else f"{loss} (weight {weight:g})")
        + (f", then MSE from step {run.mse_from}" if run.mse_from < run.total_steps and not run.rgba else ""),
        "optimizer": "AdamW",
        "schedule": (f"linear warm-up over {warmup} steps, then " if warmup else "")
        + f"cosine over {run.total_steps} steps",
        "weights": f"EMA (decay {config.ema:g})" if run.ema is not None else "last step",
        "world_size": run.procs.world,
        "device": run.procs.device.type,
        "precision": "bf16 autocast" if run.cuda else "fp32",
        "torch": torch.__version__,
    }


def batches(run: Run):
    """The training batches from where the run stands, epoch after epoch, on the run's device."""
    loader_generator = torch.Generator()  # the loader's own seed draws leave the global generator alone
    while True:
        epoch, offset = divmod(run.step, len(run.sampler) // run.local_batch)
        run.sampler.set_epoch(epoch)
        run.train_set.set_epoch(epoch)
        loader = DataLoader(
            run.train_set, batch_size=run.local_batch, sampler=SkipSampler(run.sampler, offset * run.local_batch),
            drop_last=True, collate_fn=keep_batch, num_workers=run.config.num_workers, pin_memory=run.cuda,
            generator=loader_generator,
        )
        for x in loader:
            x = x.to(run.procs.device, non_blocking=True)
            yield x.contiguous(memory_format=torch.channels_last)


def train_step(run: Run, x: torch.Tensor) -> torch.Tensor:
    """One optimizer step on batch ``x``; the loss, detached."""
    config = run.config
    with run.autocast():
        x_hat, z = run.net(x)
    if run.rgba:
        loss = rgba_loss(x_hat.float(), x, config.alpha_weight)
    elif run.step >= run.mse_from:
        loss = F.mse_loss(x_hat.float(), x)
    else:
        loss = training_loss(x_hat.float(), x, config.loss, structure_weight(config))
    if config.latent_reg:
        loss = loss + config.latent_reg * latent_regulariser(z.float())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.autoencoder)
    run.step += 1
    return loss.detach()


def evaluate(run: Run) -> dict[str, float]:
    """Validation metrics of the shipped weights (and of the trained ones, as raw_*, with an EMA)."""
    autocast = run.autocast if run.cuda else None
    metrics = validate(run.shipped, run.val_tiles, run.procs, autocast, run.rgba)
    if run.ema is not None:
        raw = validate(run.autoencoder, run.val_tiles, run.procs, autocast, run.rgba)
        metrics.update({f"raw_{k}": v for k, v in raw.items()})
    if not all(math.isfinite(v) for k, v in metrics.items() if k.endswith(("l1", "mse"))):
        raise TrainingError(f"validation metrics are not finite at step {run.step}; stopped without saving; "
                            f"try a lower --lr")
    return metrics


def save(run: Run, metrics: dict[str, float], is_best: bool) -> None:
    """best.safetensors (when ``is_best``), last.safetensors and the resumable state, atomically."""
    training = {**run.record, "step": run.step, "inputs_seen": run.inputs, "elapsed_s": round(run.elapsed, 1),
                "metrics": metrics}
    dtype = DTYPES[run.config.checkpoint_dtype]
    if is_best:
        models.save_checkpoint(run.shipped, run.out / "best.safetensors", {**training, "checkpoint": "best"}, dtype)
    models.save_checkpoint(run.shipped, run.out / "last.safetensors", {**training, "checkpoint": "last"}, dtype)
    save_state(run.out / STATE, {
        "step": run.step, "inputs_seen": run.inputs, "elapsed_s": run.elapsed, "best_val_l1": run.best,
        "config": asdict(run.config), "commands": run.commands, "data": {"manifest_sha256": run.data.manifest_sha256},
        "model": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in run.autoencoder.state_dict().items()},
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "rng": rng_state(),
        **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
    })


class Logs:
    """train.csv, val.csv, TensorBoard and the progress bar, on the main process only."""

    def __init__(self, run: Run, resumed: bool) -> None:
        main, config = run.procs.main, run.config
        self.bar = tqdm(total=run.total_steps * config.batch_size, initial=run.inputs, unit=" inputs", unit_scale=True,
                        dynamic_ncols=True, disable=not (main and config.progress), smoothing=0.05)
        self.train = self.val = self.board = None
        if main:
            run.out.mkdir(parents=True, exist_ok=True)
            self.train = CsvLog(run.out / "train.csv", TRAIN_FIELDS, keep_until_step=run.step)
            self.val = CsvLog(run.out / "val.csv", val_fields(list(run.val_tiles), run.ema is not None, run.rgba),
                              keep_until_step=run.step)
            if config.tensorboard:
                self.board = TensorBoardLog(run.out / "tb", resume_step=run.inputs if resumed else None)

    def training(self, row: dict) -> None:
        if self.train is not None:
            self.train.write(row)
            if self.board:
                self.board.write(row["inputs"], {"loss": row["loss"], "lr": row["lr"], "inputs_per_s": row["inputs_per_s"]},
                                 "train")
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)

    def validation(self, run: Run, metrics: dict[str, float], is_best: bool) -> None:
        if self.val is None:
            return
        self.val.write({"step": run.step, "inputs": run.inputs, **metrics, "best": int(is_best)})
        if self.board:
            self.board.write(run.inputs, metrics, "val")
        alpha = f" alpha IoU {metrics['val_alpha_iou']:.4f}" if run.rgba else ""
        self.bar.write(f"step {run.step} ({run.inputs:,} inputs): val L1 {metrics['val_l1']:.5f} "
                       f"MSE {metrics['val_mse']:.6f} PSNR {metrics['val_psnr']:.2f} dB SSIM {metrics['val_ssim']:.4f}"
                       + alpha + (" (best)" if is_best else ""))

    def close(self) -> None:
        self.bar.close()
        for log in (self.train, self.val, self.board):
            if log is not None:
                log.close()


class Progress:
    """The loss and step counts since the last log row, shared over processes at each row."""

    def __init__(self, run: Run) -> None:
        self.loss_sum = torch.zeros((), device=run.procs.device)
        self.nonfinite = torch.zeros((), device=run.procs.device)
        self.step, self.time = run.step, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.nonfinite += (~torch.isfinite(loss)).float()

    def row(self, run: Run, stop_asked: bool) -> tuple[dict, bool]:
        """One all-reduce tells every process the mean loss, a non-finite loss and a stop
        request; the train.csv row and whether any process was asked to stop."""
        flags = torch.tensor([float(stop_asked), float(run.step - self.step)], device=run.procs.device)
        shared = all_sum(torch.cat([torch.stack([self.loss_sum, self.nonfinite]), flags]), run.procs)
        mean_loss, bad, asked, steps = shared.tolist()
        if bad:
            kept = (f"the last good checkpoint {run.out / 'last.safetensors'} is kept" if (run.out / STATE).exists()
                    else "no checkpoint was written yet")
            raise TrainingError(f"loss is not finite (nan/inf) at step {run.step} ({run.inputs:,} inputs); stopped "
                                f"without saving: {kept}; try a lower --lr")
        now = time.perf_counter()
        run.elapsed += now - self.time
        rate = (run.step - self.step) * run.config.batch_size / max(now - self.time, 1e-9)
        row = {"step": run.step, "inputs": run.inputs, "loss": mean_loss / steps, "lr": run.scheduler.get_last_lr()[0],
               "inputs_per_s": round(rate, 1), "elapsed_s": round(run.elapsed, 1)}
        self.loss_sum.zero_()
        self.step, self.time = run.step, now
        return row, bool(asked)


def _train(config: TrainConfig, given: frozenset[str] | None, procs: Processes) -> dict:
    config, state, commands = resume_settings(config, given)
    if config.threads:  # after the resume: a resumed run keeps its thread count
        torch.set_num_threads(config.threads)
    run = prepare(config, procs, state, commands)
    config = run.config
    eval_steps = max(1, config.eval_every // config.batch_size)
    stop_inputs = min(config.stop_after or math.inf, run.total_steps * config.batch_size)
    logs, progress = Logs(run, resumed=state is not None), Progress(run)
    metrics, stopped = None, None
    with StopRequest() as stop, contextlib.closing(logs):
        for x in batches(run):
            progress.add(train_step(run, x))
            logs.bar.update(config.batch_size)
            eval_due = run.step % eval_steps == 0 or run.step >= run.total_steps or run.inputs >= stop_inputs
            if run.step % config.log_every == 0 or eval_due or (stop.asked and procs.world == 1):
                row, asked = progress.row(run, stop.asked)
                logs.training(row)
                if asked:
                    stopped, eval_due = "signal", True
            if run.step >= run.total_steps:
                stopped = "done"
            elif run.inputs >= stop_inputs:
                stopped = "stop_after"
            if eval_due:
                tock = time.perf_counter()
                metrics = evaluate(run)
                is_best = run.best is None or metrics["val_l1"] < run.best
                run.best = metrics["val_l1"] if is_best else run.best
                if procs.main:
                    logs.validation(run, metrics, is_best)
                    save(run, metrics, is_best)
                progress.time += time.perf_counter() - tock  # validation time is not training time
            if stopped:
                break
    return {"out": str(run.out), "step": run.step, "inputs_seen": run.inputs, "metrics": metrics,
            "best_val_l1": run.best, "stopped": stopped}
