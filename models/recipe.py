"""Recipes: the stages that make a model, as a checked-in TOML file (`models/recipes/NAME.toml`).

A recipe names the teachers, the preset (data, batch, crop), the seed, the architecture the first stage
builds, and its stages in order. Each stage is one `genreal distill` run: its iterations, peak learning
rate, time budget, texture-head width, frozen parameters and every loss weight (`LossWeights`, all of
them: a recipe is complete). The first stage starts fresh; each later one starts from the stage before
(`--init`). `run_recipe` runs them into ``OUT/stages/N-NAME/`` (a finished stage is kept, an unfinished one
resumed from its checkpoint) and copies the last one to ``OUT``; the manifest records the recipe's name
and the sha256 of its file, and each stage's training nests the one it started from (``init_training``).
`manifest_mismatches` compares a manifest's recorded training with a recipe, stage by stage.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional

from genreal_errors import UserError
from models.manifest import MANIFEST_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
STAGES_DIR = "stages"
STAGE_KEY_FILE = "stage_key.txt"  # in a stage's folder: the `stage_key` it is being trained under

#: loss terms added to `LossWeights` after some stages ran: a stage's manifest without the key trained
#: without the term, so the recipe must have it at this value
ADDED_LATER = {"texture": 0.0, "pixel_blur": 0.0, "warm_temporal": 0.0, "lattice": 0.0, "temporal_noise": 0.0,
               "lattice_flat": 0.0}
#: settings that only matter while another term is on (texture_taps with texture, lattice_period with a
#: lattice term): a manifest written before they existed did not record them
DEPENDS_ON = {"texture_taps": ("texture",), "lattice_period": ("lattice", "lattice_flat")}
#: retired loss settings that manifests still record (docs/experiments.md): the value a stage must have had
RETIRED = {"adversarial": 0.0, "texture_kind": "sliced", "texture_features": "predictor", "grain": 0.0,
           "warm_chain": 0.0}
RETIRED_FREE = {"adversarial_lr"}  # irrelevant with adversarial 0


@dataclass(frozen=True)
class Stage:
    name: str
    iters: int
    lr: float
    budget_min: Optional[float]  # wall-clock minutes for the stage (None: iterations only)
    tex_ch: int
    freeze: tuple[str, ...]
    losses: Any  # models.distill.LossWeights


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    sha256: str
    preset: str
    seed: int
    teachers: tuple[tuple[str, str], ...]  # (style name, teacher spec)
    model: dict[str, Any]  # ModelConfig fields but num_styles (the teachers') and tex_ch (each stage's)
    stages: tuple[Stage, ...]

    def record(self) -> dict[str, Any]:
        """What a manifest records of the recipe."""
        return {"name": self.name, "file": _display_path(self.path), "sha256": self.sha256}


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(RECIPES_DIR.parent.parent))
    except ValueError:
        return str(path)


def resolve_recipe(name_or_file: str) -> Path:
    """A recipe name (a file in `RECIPES_DIR`) or a path to a TOML file → its path."""
    p = Path(name_or_file).expanduser()
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UserError(f"--recipe {name_or_file}: no such file")
        return p
    cand = RECIPES_DIR / f"{name_or_file}.toml"
    if not cand.is_file():
        known = ", ".join(sorted(f.stem for f in RECIPES_DIR.glob("*.toml")))
        raise UserError(f"--recipe {name_or_file}: no such recipe (built in: {known}; or give a .toml file)")
    return cand


def _take(table: dict[str, Any], where: str, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in table:
        raise UserError(f"{where}: {key} is missing")
    value = table.pop(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UserError(f"{where}: {key} = {value!r} is not a {getattr(kind, '__name__', kind)}")
    return value


def _no_extra(table: dict[str, Any], where: str) -> None:
    if table:
        raise UserError(f"{where}: unknown key{'s' if len(table) > 1 else ''} {', '.join(sorted(table))}")


def _losses(table: dict[str, Any], where: str) -> Any:
    from models.distill import LossWeights

    values: dict[str, Any] = {}
    for f in fields(LossWeights):
        default = getattr(LossWeights(), f.name)
        if isinstance(default, tuple):
            values[f.name] = tuple(_take(table, where, f.name, list))
        elif isinstance(default, str):
            values[f.name] = _take(table, where, f.name, str)
        else:
            values[f.name] = float(_take(table, where, f.name, (int, float)))
    _no_extra(table, where)
    return LossWeights(**values)


def model_config(model: dict[str, Any], num_styles: int, tex_ch: int) -> Any:
    """A recipe's [model] table → `ModelConfig`."""
    from models.model import ModelConfig

    return ModelConfig(**{**model, "fsq_levels": tuple(model["fsq_levels"]), "num_styles": num_styles,
                          "tex_ch": tex_ch})


def load_recipe(name_or_file: str) -> Recipe:
    """Read and check a recipe; `UserError` naming the file and the key for anything missing or unknown."""
    from models.distill import PRESETS
    from models.model import ModelConfig
    from models.teachers import split_named_spec

    path = resolve_recipe(name_or_file)
    raw = path.read_bytes()
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"recipe {path}: not valid TOML ({exc})") from None
    where = f"recipe {path}"
    name = _take(doc, where, "name", str)
    preset = _take(doc, where, "preset", str)
    if preset not in PRESETS:
        raise UserError(f"{where}: preset {preset!r} is not one of {', '.join(PRESETS)}")
    seed = _take(doc, where, "seed", int)
    teachers = tuple(split_named_spec(t) for t in _take(doc, where, "teachers", list))
    if not teachers:
        raise UserError(f"{where}: teachers is empty")
    model = dict(_take(doc, where, "model", dict))
    known = {f.name for f in fields(ModelConfig)} - {"num_styles", "tex_ch"}
    missing, extra = sorted(known - set(model)), sorted(set(model) - known)
    if missing or extra:
        raise UserError(f"{where}: [model] must list every ModelConfig field but num_styles and tex_ch "
                        f"(missing: {', '.join(missing) or '-'}; unknown: {', '.join(extra) or '-'})")
    try:
        model_config(model, len(teachers), 0)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: [model]: {exc}") from None
    stages = []
    for i, st in enumerate(_take(doc, where, "stages", list)):
        st = dict(st)
        sw = f"{where}, stage {i + 1}"
        budget = float(_take(st, sw, "budget_min", (int, float)))
        stage = Stage(name=_take(st, sw, "name", str), iters=_take(st, sw, "iters", int),
                      lr=float(_take(st, sw, "lr", (int, float))), budget_min=budget if budget > 0 else None,
                      tex_ch=_take(st, sw, "tex_ch", int), freeze=tuple(_take(st, sw, "freeze", list)),
                      losses=_losses(dict(_take(st, sw, "losses", dict)), f"{sw} [losses]"))
        _no_extra(st, sw)
        if stage.iters < 1 or not 0 < stage.lr <= 0.1 or not 0 <= stage.tex_ch <= 64:
            raise UserError(f"{sw}: iters must be >= 1, lr in (0, 0.1], tex_ch 0..64")
        stages.append(stage)
    _no_extra(doc, where)
    if not stages:
        raise UserError(f"{where}: no [[stages]]")
    if len({s.name for s in stages}) != len(stages):
        raise UserError(f"{where}: stage names must be unique")
    return Recipe(name, path, hashlib.sha256(raw).hexdigest(), preset, seed, teachers, model, tuple(stages))


def stage_key(recipe: Recipe, upto: int) -> str:
    """A hash of everything stages 0..upto train with (a changed earlier stage changes every later key)."""
    body = {"preset": recipe.preset, "seed": recipe.seed, "teachers": recipe.teachers, "model": recipe.model,
            "stages": [{**asdict(s), "losses": asdict(s.losses)} for s in recipe.stages[: upto + 1]]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


def _finished(stage_dir: Path, key: str) -> bool:
    try:
        m = json.loads((stage_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (stage_dir / WEIGHTS_FILE).is_file() and m.get("training", {}).get("recipe", {}).get("stage_key") == key


def run_recipe(recipe: Recipe, out: Path, cache_dir: Optional[Path] = None, progress: bool = True) -> dict[str, Any]:
    """Run every stage not already finished in ``OUT/stages/``; copy the last to OUT; → its manifest."""
    from tqdm import tqdm

    from models.distill import CHECKPOINT, PRESETS, DistillConfig, distill
    from models.teachers import parse_teacher

    out = Path(out)
    teachers = tuple(parse_teacher(spec) for _, spec in recipe.teachers)
    names = tuple(n for n, _ in recipe.teachers)
    model_cfg = model_config(recipe.model, len(teachers), recipe.stages[0].tex_ch)
    prev: Optional[Path] = None
    bar = tqdm(recipe.stages, desc=f"recipe {recipe.name}", unit="stage", disable=not progress)
    for i, st in enumerate(bar):
        sdir = out / STAGES_DIR / f"{i + 1}-{st.name}"
        key = stage_key(recipe, i)
        bar.set_postfix(stage=st.name)
        if _finished(sdir, key):
            log.info("stage %s: finished before, kept (%s)", st.name, sdir)
        else:
            key_file = sdir / STAGE_KEY_FILE
            if sdir.exists() and not (key_file.is_file() and key_file.read_text() == key):
                shutil.rmtree(sdir)  # trained (or started) under other settings: start the stage afresh
            sdir.mkdir(parents=True, exist_ok=True)
            key_file.write_text(key)
            resume = (sdir / CHECKPOINT).is_file()  # the same stage, interrupted: continue it
            preset = replace(PRESETS[recipe.preset], lr=st.lr, budget_min=st.budget_min)
            distill(DistillConfig(
                teachers=teachers, names=names, out=sdir, preset=preset, model=model_cfg, losses=st.losses,
                seed=recipe.seed, resume=resume, init=prev, tex_ch=st.tex_ch, freeze=st.freeze, iters=st.iters,
                cache_dir=cache_dir or out / "cache", progress=progress,
                recipe={**recipe.record(), "stage": st.name, "stage_key": key}))
        prev = sdir
    bar.close()
    assert prev is not None
    for f in (WEIGHTS_FILE, MANIFEST_FILE):
        shutil.copyfile(prev / f, out / f)
    return json.loads((out / MANIFEST_FILE).read_text())


# -- checking a manifest against a recipe ----------------------------------------------------------

def _training_chain(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's training and the ones it nests (``init_training``), oldest first."""
    chain, t = [], manifest.get("training")
    while t:
        chain.append(t)
        t = t.get("init_training")
    return chain[::-1]


def _command_options(command: str) -> dict[str, list[str]]:
    import shlex

    words = shlex.split(command.split(" (")[0])
    opts: dict[str, list[str]] = {}
    for a, b in zip(words, words[1:] + [""]):
        if a.startswith("--"):
            opts.setdefault(a, []).append(b)
    return opts


def manifest_mismatches(recipe: Recipe, manifest: dict[str, Any]) -> list[str]:
    """Every way the manifest's recorded training differs from the recipe ([] when they agree): per stage
    the preset and its settings, seed, iterations, learning rate, time budget, data, every loss weight,
    and where the run's command is recorded its texture head, frozen parameters and --loss values; the
    styles and their teachers; the model's architecture; the recipe's hash where the manifest has one."""
    from models.distill import PRESETS, data_section

    bad: list[str] = []
    chain = _training_chain(manifest)
    if len(chain) != len(recipe.stages):
        return [f"the manifest records {len(chain)} training stages, the recipe has {len(recipe.stages)}"]
    preset = PRESETS[recipe.preset]
    fixed = {k: v for k, v in asdict(preset).items() if k not in ("data", "lr", "budget_min")}
    data_want = data_section(replace(preset.data, seed=recipe.seed), preset.crop, preset.margin, [])
    tex_ch = recipe.stages[0].tex_ch
    for st, tr in zip(recipe.stages, chain):
        w = f"stage {st.name}"

        def same(what: str, got: Any, want: Any) -> None:
            if got != want:
                bad.append(f"{w}: {what} {got!r} in the manifest, {want!r} in the recipe")

        same("preset", tr.get("preset"), recipe.preset)
        same("seed", tr.get("seed"), recipe.seed)
        same("planned_iterations", tr.get("planned_iterations"), st.iters)
        settings = dict(tr.get("settings", {}))
        same("lr", settings.pop("lr", None), st.lr)
        same("budget_min", settings.pop("budget_min", None), st.budget_min)
        same("preset settings", settings, fixed)
        sources = {k: v for k, v in tr.get("sources", {}).items() if k != "variants"}
        same("data", sources, {k: v for k, v in data_want.items() if k != "variants"})
        got = dict(tr.get("losses", {}))
        want = asdict(st.losses)
        for k, v in want.items():
            if k in got:
                g = got.pop(k)
                same(f"losses.{k}", tuple(g) if isinstance(g, list) else g, v)
            elif k in ADDED_LATER:
                same(f"losses.{k} (not recorded: the term did not exist yet)", ADDED_LATER[k], v)
            elif k in DEPENDS_ON and all(want[k2] == ADDED_LATER[k2] for k2 in DEPENDS_ON[k]):
                continue  # only matters with a term that was off
            else:
                bad.append(f"{w}: losses.{k} is not recorded in the manifest")
        for k, g in got.items():
            if k in RETIRED:
                same(f"losses.{k} (retired)", g, RETIRED[k])
            elif k not in RETIRED_FREE:
                bad.append(f"{w}: losses.{k} = {g!r} in the manifest is not a recipe field")
        if "recipe" in tr:
            same("recipe stage", tr["recipe"].get("stage"), st.name)
        command = tr.get("command")
        if "freeze" in tr:  # recorded since recipes exist
            same("tex_ch", tr.get("tex_ch"), st.tex_ch)
            same("freeze", tuple(tr["freeze"]), st.freeze)
        elif command:  # the shipped model's later stages: their command line
            opts = _command_options(command)
            same("tex_ch (command)", int(opts["--tex-ch"][-1]) if "--tex-ch" in opts else tex_ch, st.tex_ch)
            same("freeze (command)", tuple(opts.get("--freeze", [])), st.freeze)
            if "--lr" in opts:
                same("lr (command)", float(opts["--lr"][-1]), st.lr)
            for item in opts.get("--loss", []):
                k, _, v = item.partition("=")
                same(f"--loss {k} (command)", float(v), getattr(st.losses, k))
            same("teachers (command)", opts.get("--teacher", []), [f"{n}={s}" for n, s in recipe.teachers])
        elif tr is not chain[0]:
            bad.append(f"{w}: the manifest records neither the texture head and frozen parameters nor a command")
        tex_ch = st.tex_ch
    styles = [(s.get("name"), s.get("teacher")) for s in manifest.get("styles", [])]
    if styles != list(recipe.teachers):
        bad.append(f"styles {styles} in the manifest, teachers {list(recipe.teachers)} in the recipe")
    config = dict(manifest.get("config", {}))
    config.pop("dec_res", None)
    want_cfg = {**recipe.model, "tex_ch": recipe.stages[-1].tex_ch, "num_styles": len(recipe.teachers)}
    want_cfg["fsq_levels"] = list(want_cfg["fsq_levels"])
    if config != want_cfg:
        bad.append(f"model config {config} in the manifest, {want_cfg} from the recipe")
    rec = manifest.get("training", {}).get("recipe")
    if rec is not None and (rec.get("name") != recipe.name or rec.get("sha256") != recipe.sha256):
        bad.append(f"the manifest names recipe {rec.get('name')} sha256 {rec.get('sha256')}, the file is "
                   f"{recipe.name} sha256 {recipe.sha256}")
    return bad
