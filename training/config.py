"""Settings of a training run, with the original experiment's values as defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

BASELINE_LR = 3e-4  # seed: lr of the CNN baseline
DCAE_LR = 9.375e-5  # seed: DC-AE (upstream used 9.375e-7; 9.375e-4 did not train)
CHECKPOINT_DTYPES = ("float32", "float16", "bfloat16")
LOSSES = ("l1", "l1+grad", "l1+ssim")  # training.losses
DEFAULT_STRUCTURE_WEIGHT = {"l1": 0.0, "l1+grad": 0.5, "l1+ssim": 0.2}
DEVICES = ("auto", "cpu", "cuda")


def option(default, help: str, **more):
    """A dataclass field whose command-line flag is described with it: ``metadata["help"]`` and,
    in ``more``, ``choices``, ``default_text`` (when the default needs words) and ``flag``
    (``"switch"``: a flag that turns the setting on, ``"negate"``: ``--no-NAME`` turns it off)."""
    return field(default=default, metadata={"help": help, **more})


@dataclass(frozen=True)
class TrainConfig:
    """`tessera train`: each field is one option, its flag's help beside it (``tessera.training.cli``)."""

    model: str | None = option(None, "preset name (dcae-s48-f8c4, dcae-t48, baseline, ...) or a dot-list "
                                     "string; None only on resume")
    data: str = option("data/dcss", "data set folder from `tessera data`")
    out: str = option("runs/run", "run folder for checkpoints and logs", default_text="runs/<model>")
    max_inputs: int = option(1_000_000, "training inputs; the cosine schedule spans them")
    batch_size: int = option(64, "global batch size, split evenly over processes")
    lr: float | None = option(None, "peak learning rate",
                              default_text=f"{BASELINE_LR:g} for baseline, {DCAE_LR:g} for DC-AE")
    warmup: int = option(0, "inputs of linear learning-rate warm-up before the cosine decay")
    ema: float = option(0.0, "decay of an exponential moving average of the weights, which the checkpoints then "
                             "hold, e.g. 0.999; 0: off")
    loss: str = option("l1", "l1, l1+grad (plus image-gradient L1) or l1+ssim", choices=LOSSES)
    structure_weight: float | None = option(None, "weight of the loss's structure term",
                                            default_text="0.5 for l1+grad, 0.2 for l1+ssim")
    weight_decay: float = option(0.01, "AdamW weight decay")
    latent_reg: float = option(1e-4, "weight of the latent regulariser 1e-4 x (|0.5 - std| + |mean|) of the "
                                     "latents; 0 turns it off")
    mse_phase: float = option(0.0, "fraction of the schedule, at its end, that trains on MSE (the loss PSNR "
                                   "measures) instead of the loss given; RGB models; 0: off")
    alpha_weight: float = option(1.0, "RGBA models: weight of the alpha error against the colour error, which is "
                                      "weighted by coverage")
    augment: bool = option(False, "random flips and quarter turns", flag="switch")
    seed: int = option(0, "random seed: weights, data order, augmentation")
    eval_every: int = option(20_000, "inputs between validations and checkpoints")
    log_every: int = option(10, "steps between rows of train.csv")
    stop_after: int | None = option(None, "stop after this many inputs, resumable; the schedule still spans "
                                          "--max-inputs", default_text="the end of the schedule")
    resume: bool = option(False, "continue the run in --out from its last state, with its settings", flag="switch")
    device: str = option("auto", "auto: CUDA when present, else CPU", choices=DEVICES)
    threads: int | None = option(None, "torch CPU threads; kept by --resume (the same count gives bit-identical "
                                       "results)", default_text="torch's")
    num_workers: int = option(0, "DataLoader workers (tiles live in memory, so 0 is usually fastest)")
    checkpoint_dtype: str = option("float32", "dtype of best/last .safetensors (the resume state stays float32)",
                                   choices=CHECKPOINT_DTYPES)
    tensorboard: bool = option(True, "TensorBoard events", flag="negate")
    progress: bool = option(True, "progress bar", flag="negate")
    command: str = ""  # the command line that started the run, recorded in checkpoints (no flag)

    def __post_init__(self) -> None:
        if not self.model and not self.resume:
            raise ValueError("--model is required: a preset name such as dcae-s48 or a dot-list string")
        positive = ("max_inputs", "batch_size", "eval_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must not be negative, got {self.warmup}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema is a decay in [0, 1), 0 for off; got {self.ema}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown --loss {self.loss!r}; known: {list(LOSSES)}")
        if self.structure_weight is not None and self.structure_weight < 0:
            raise ValueError(f"--structure-weight must not be negative, got {self.structure_weight}")
        if self.latent_reg < 0 or self.weight_decay < 0:
            raise ValueError("--latent-reg and --weight-decay must not be negative")
        if not 0 <= self.mse_phase <= 1:
            raise ValueError(f"--mse-phase is a fraction of the schedule in [0, 1], got {self.mse_phase}")
        if not self.alpha_weight > 0:
            raise ValueError(f"--alpha-weight must be positive, got {self.alpha_weight}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"--stop-after must be at least 1, got {self.stop_after}")
        if self.checkpoint_dtype not in CHECKPOINT_DTYPES:
            raise ValueError(f"unknown --checkpoint-dtype {self.checkpoint_dtype!r}; known: {list(CHECKPOINT_DTYPES)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown --device {self.device!r}; known: {list(DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")


# settings that shape the weights: a resumed run must keep them
RUN_KEYS = ("model", "max_inputs", "batch_size", "lr", "warmup", "ema", "loss", "structure_weight", "weight_decay",
            "latent_reg", "mse_phase", "alpha_weight", "augment", "seed")
FIELDS = tuple(f.name for f in fields(TrainConfig))
DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}  # what a run saved before a setting existed had


def default_lr(arch: str) -> float:
    return BASELINE_LR if arch == "baseline" else DCAE_LR


def warmup_steps(config: TrainConfig) -> int:
    """Optimizer steps of the learning-rate warm-up."""
    return math.ceil(config.warmup / config.batch_size)


def structure_weight(config: TrainConfig) -> float:
    return DEFAULT_STRUCTURE_WEIGHT[config.loss] if config.structure_weight is None else config.structure_weight


@dataclass(frozen=True)
class SharpenConfig:
    """`tessera sharpen`: each field is one option, its help beside it."""

    checkpoint: str  # the base model (a positional argument)
    data: str = option("data/corpus", "its training data set")
    out: str = option("runs/sharp", "run folder (last.safetensors, val.csv, train.csv, run.json)")
    max_inputs: int = option(200_000, "training inputs")
    batch_size: int = option(32, "tiles per step")
    lr: float = option(1e-4, "Adam step size of the head and the discriminator (betas 0.5, 0.9)")
    adv_weight: float = option(0.1, "weight of the head's adversarial (hinge) loss against its L1 loss")
    adv_start: int = option(10_000, "inputs that train the discriminator alone before the head sees its loss")
    eval_every: int = option(20_000, "inputs between validations")
    augment: bool = option(True, "flips and quarter turns of the training tiles", flag="negate")
    seed: int = option(0, "random seed")
    threads: int | None = option(None, "torch CPU threads", default_text="torch's")
    checkpoint_dtype: str = option("float16", "dtype of the written weights")
