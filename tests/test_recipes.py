"""Recipes (models/recipes/*.toml): the shipped model's manifest records exactly the cpu recipe's stages, the
check notices a difference, bad recipes are one-line errors, and the smoke recipe trains end to end."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="recipes run distillation (the train extra)")

from models.distill import LossWeights  # noqa: E402
from models.manifest import default_model_dir, read_manifest  # noqa: E402
from models.recipe import RECIPES_DIR, load_recipe, manifest_mismatches  # noqa: E402
from genreal_errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def cpu():
    return load_recipe("cpu")


@pytest.fixture(scope="module")
def shipped():
    return read_manifest(default_model_dir())


def test_the_shipped_manifest_is_the_cpu_recipe_stage_by_stage(cpu, shipped):
    """Every stage's preset, settings, seed, iterations, learning rate, time budget, data and loss weights, the
    texture head and frozen parameters of the runs whose command was recorded, the styles, the architecture,
    and the recipe file's hash that the manifest names."""
    assert [s.name for s in cpu.stages] == ["third", "fourth", "fifth", "sixth-noise", "sixth"]
    assert manifest_mismatches(cpu, shipped) == []
    rec = shipped["training"]["recipe"]
    assert rec["name"] == "cpu" and rec["file"] == "models/recipes/cpu.toml"
    assert rec["sha256"] == cpu.sha256, "cpu.toml changed: put its new sha256 into the shipped manifest's training.recipe"


def test_loss_weight_defaults_are_the_last_stage(cpu):
    assert LossWeights() == cpu.stages[-1].losses


@pytest.mark.parametrize("path,value,words", [
    (("training", "init_training", "losses", "temporal"), 0.5, "stage sixth-noise: losses.temporal"),
    (("training", "settings", "lr"), 1e-3, "stage sixth: lr"),
    (("training", "init_training", "init_training", "init_training", "init_training", "planned_iterations"), 9000,
     "stage third: planned_iterations"),
    (("training", "init_training", "init_training", "losses", "adversarial"), 0.05, "adversarial (retired)"),
    (("training", "sources", "widths"), [512], "stage sixth: data"),
    (("config", "tex_ch"), 4, "model config"),
    (("training", "recipe", "sha256"), "0" * 64, "sha256"),
])
def test_a_difference_is_named(cpu, shipped, path, value, words):
    m = copy.deepcopy(shipped)
    d = m
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    bad = manifest_mismatches(cpu, m)
    assert len(bad) == 1 and words in bad[0], bad


def test_a_loss_weight_the_manifest_lacks_is_named(cpu, shipped):
    m = copy.deepcopy(shipped)
    del m["training"]["init_training"]["losses"]["gradient"]
    assert manifest_mismatches(cpu, m) == ["stage sixth-noise: losses.gradient is not recorded in the manifest"]
    del m["training"]["losses"]["texture_taps"]  # needed: texture is on
    assert "stage sixth: losses.texture_taps is not recorded in the manifest" in manifest_mismatches(cpu, m)


def test_a_changed_recipe_or_command_is_named(cpu, shipped, tmp_path):
    text = (RECIPES_DIR / "cpu.toml").read_text()
    edited = tmp_path / "cpu.toml"
    edited.write_text(text.replace('freeze = ["decoder.up4", "decoder.out"]\n[stages.losses]',
                                   'freeze = ["decoder.up4"]\n[stages.losses]', 1))
    other = load_recipe(str(edited))
    assert other.sha256 != cpu.sha256
    bad = manifest_mismatches(other, shipped)
    assert any("stage fourth: freeze (command)" in b for b in bad) and any("sha256" in b for b in bad), bad
    m = copy.deepcopy(shipped)
    m["training"]["command"] = m["training"]["command"].replace("--loss lattice_flat=2000", "--loss lattice_flat=1000")
    assert any("--loss lattice_flat (command)" in b for b in manifest_mismatches(cpu, m))


@pytest.mark.parametrize("edit,words", [
    (lambda t: t.replace("lattice_flat = 2000.0\n", "", 1), "lattice_flat is missing"),
    (lambda t: t.replace("seed = 0", "seed = 0\nsed = 1", 1), "unknown key sed"),
    (lambda t: t.replace("lr = 5e-4", 'lr = "fast"', 1), "lr"),
    (lambda t: t.replace('preset = "cpu"', 'preset = "huge"', 1), "preset"),
    (lambda t: t.replace("enc_ch = 32\n", "", 1), "[model]"),
    (lambda t: t + "\n[[stages]\n", "not valid TOML"),
])
def test_bad_recipes_are_user_errors(tmp_path, edit, words):
    path = tmp_path / "r.toml"
    path.write_text(edit((RECIPES_DIR / "cpu.toml").read_text()))
    with pytest.raises(UserError, match=None) as err:
        load_recipe(str(path))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_cli_recipe_errors_are_one_line_exit_2(tmp_path, capsys):
    from realtime.cli import main

    for argv, words in ((["--recipe", "nope"], "no such recipe"),
                        (["--recipe", "smoke", "--loss", "texture=1"], "drop --loss"),
                        (["--recipe", "smoke", "--teacher", "builtin:1"], "drop --teacher"),
                        ([], "--teacher SPEC"),
                        (["--recipe", "smoke", "--cache-dir", "/proc/nope"], "--cache-dir")):
        rc = main(["distill", "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()
    rc = main(["distill", "--recipe", "smoke", "--out", "/proc/nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot create --out" in err[0], err


@pytest.mark.slow
def test_the_smoke_recipe_trains_end_to_end_and_keeps_finished_stages(tmp_path, capsys):
    from models.build import load_model
    from realtime.cli import main

    smoke = load_recipe("smoke")
    out = tmp_path / "m"
    assert main(["distill", "--recipe", "smoke", "--out", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = read_manifest(out)
    assert printed["recipe"]["name"] == "smoke" and printed["recipe"]["sha256"] == smoke.sha256
    assert manifest_mismatches(smoke, manifest) == []  # the same check as the shipped model's
    assert manifest["training"]["recipe"]["stage"] == "texture"
    assert manifest["training"]["init_training"]["recipe"]["stage"] == "base"
    model, _ = load_model(out)  # strict
    assert model.cfg.tex_ch == 2 and model.cfg.num_styles == 2
    stages = sorted((out / "stages").iterdir())
    assert [p.name for p in stages] == ["1-base", "2-texture"]
    # run again: both stages are finished, nothing retrains; an interrupted last stage resumes from its checkpoint
    before = {p: (p / "model.safetensors").stat().st_mtime_ns for p in stages}
    (stages[1] / "model.safetensors").unlink()
    assert main(["distill", "--recipe", "smoke", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert (stages[0] / "model.safetensors").stat().st_mtime_ns == before[stages[0]]
    again = read_manifest(out)
    assert again["training"]["iterations"] == smoke.stages[-1].iters and manifest_mismatches(smoke, again) == []
    # an edited stage is trained again (and so is every stage after it)
    edited = tmp_path / "smoke.toml"
    edited.write_text((RECIPES_DIR / "smoke.toml").read_text().replace("iters = 4", "iters = 3", 1))
    assert main(["distill", "--recipe", str(edited), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert (stages[0] / "model.safetensors").stat().st_mtime_ns == before[stages[0]]
    assert read_manifest(out)["training"]["planned_iterations"] == 3
    assert Path(read_manifest(out)["training"]["recipe"]["file"]) == edited
