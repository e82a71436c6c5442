"""Every bundled checkpoint says how it was made: the command, commit and data of its training run
in its header, the run's logs under docs/runs/<name>/ that agree with it, latent statistics over
the tiles it trained on, and a row in checkpoints/README.md."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from tessera import model

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(p.stem for p in (ROOT / "checkpoints").glob("*.safetensors"))
BUNDLED = [name for name in FILES if "." not in name]
DECODERS = [name for name in FILES if "." in name]  # <model>.<decoder>: a second decoder of a model's latents


def test_there_are_bundled_checkpoints():
    from tessera.service.runtime.settings import DEFAULT_MODEL

    assert DEFAULT_MODEL in BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_a_bundled_checkpoint_carries_the_record_of_the_run_that_made_it(name):
    _, meta = model.load_checkpoint(ROOT / "checkpoints" / f"{name}.safetensors")
    training = meta["training"]
    assert training["command"].startswith(f"tessera train --model {training['model']} ")
    assert training["spec"] == training["model"] == meta["spec"]
    manifest = training["data"]["manifest_sha256"]
    assert re.fullmatch("[0-9a-f]{64}", manifest), manifest  # a sha256

    run = json.loads((ROOT / "docs" / "runs" / name / "run.json").read_text())
    assert (run["command"], run["git_commit"], run["data"]["manifest_sha256"]) == (
        training["command"], training["git_commit"], manifest)

    # the shipped weights are a validation point of the logged run, with the metrics logged there
    rows = [row for row in csv.DictReader((ROOT / "docs" / "runs" / name / "val.csv").open())
            if int(row["inputs"]) == training["inputs_seen"]]
    assert rows, f"docs/runs/{name}/val.csv has no validation at {training['inputs_seen']} inputs"
    assert math.isclose(float(rows[-1]["val_l1"]), training["metrics"]["val_l1"], rel_tol=1e-9)

    stats = training["latent_stats"]
    assert stats["manifest_sha256"] == manifest  # measured on the corpus it trained on
    assert len(stats["channel_std"]) == meta["latent_shape"][0] and stats["scaling_factor"] > 0


@pytest.mark.parametrize("name", DECODERS)
def test_a_bundled_decoder_decodes_its_models_latents_and_carries_its_run(name):
    base, decoder = name.split(".")
    assert base in BUNDLED and decoder == "sharp"
    net, meta = model.load_checkpoint(ROOT / "checkpoints" / f"{name}.safetensors")
    base_net, base_meta = model.load_checkpoint(ROOT / "checkpoints" / f"{base}.safetensors")
    encoder, base_encoder = net.encoder.state_dict(), base_net.encoder.state_dict()
    assert all(encoder[k].equal(base_encoder[k]) for k in base_encoder)  # the same latents
    sharpened = meta["training"]["sharpened"]
    assert sharpened["command"].startswith(f"tessera sharpen checkpoints/{base}.safetensors ")
    assert sharpened["base"]["weights_sha256"] == base_meta["weights_sha256"]
    run = json.loads((ROOT / "docs" / "runs" / name / "run.json").read_text())
    assert (run["command"], run["git_commit"], run["inputs_seen"]) == (
        sharpened["command"], sharpened["git_commit"], sharpened["inputs_seen"])
    rows = list(csv.DictReader((ROOT / "docs" / "runs" / name / "val.csv").open()))
    assert int(rows[-1]["inputs"]) == sharpened["inputs_seen"]
    assert math.isclose(float(rows[-1]["psnr"]), sharpened["metrics"]["psnr"], rel_tol=1e-9)


@pytest.mark.parametrize("name", FILES)
def test_checkpoints_readme_lists_every_bundled_file(name):
    assert f"| `{name}.safetensors` |" in (ROOT / "checkpoints" / "README.md").read_text()
