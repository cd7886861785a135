import dataclasses
import typing
from typing import Literal

import pytest

from ldyn.config import PeftConfig, RunConfig, StageConfig, dump_config, from_dict, load_config, read_yaml, recipe_names
from ldyn.errors import LdynError
from ldyn.schema import apply_override, field_help, keys, leading_comment


def test_shipped_recipes_load_and_round_trip(tmp_path):
    for name in recipe_names():
        cfg = load_config(name, ["data.train=x.jsonl", "probe.path=x.jsonl"])
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        assert from_dict(RunConfig, read_yaml(path)) == cfg


def test_overrides_address_stages_by_name_and_index():
    overrides = ["stages.dpo.optim.lr=3e-6", "--stages.0.steps=7", "probe.types=chosen,rejected"]
    cfg = load_config("smollm2_sft_dpo", overrides)
    assert cfg.stages[1].optim.lr == 3e-6
    assert cfg.stages[0].steps == 7
    assert cfg.probe.types == ["chosen", "rejected"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("stages.dpo.optim.lrr=1", "unknown key 'stages.dpo.optim.lrr' (did you mean 'lr'?)"),
        ("probe.evry=3", "unknown key 'probe.evry' (did you mean 'every'?)"),
        ("stages.dop.steps=3", "unknown stage 'dop' in 'stages.dop' (did you mean 'dpo'?)"),
        ("stages.sft.steps=many", "field 'stages.sft.steps': expected an integer, got 'many'"),
        ("model.dtype=float16", "unknown value 'float16'"),
        ("seed", "an override must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(LdynError) as e:
        load_config("smollm2_sft_dpo", [override])
    assert message in str(e.value)


def test_unknown_recipe_key_names_file_line_and_nearest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages:\n  - name: a\n    steps: 1\n    los: {name: sft}\n")
    with pytest.raises(LdynError) as e:
        load_config(str(path))
    assert str(e.value) == f"{path}:5: unknown key 'stages.0.los' (did you mean 'loss'?)"


def test_missing_required_value_fails_before_anything_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndata:\n  train: ???\nstages:\n  - {name: a, steps: 1}\n")
    with pytest.raises(LdynError, match="missing required value: data.train"):
        load_config(str(path))
    assert load_config(str(path), ["data.train=p.jsonl"]).data.train == "p.jsonl"


def test_unknown_recipe_suggests_shipped_name():
    with pytest.raises(LdynError, match="did you mean 'smollm2_sft_dpo'"):
        load_config("smollm2_sft_dop")


def test_every_field_has_a_default_or_is_marked_required():
    for cls in (RunConfig,):
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# ---------------------------------------------------------------- one list syntax for every list key


def list_fields(cls=RunConfig, prefix=""):
    """(dotted key, element type) of every list of plain values in the settings tree (stage lists addressed by 0)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from list_fields(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            if dataclasses.is_dataclass(item):
                yield from list_fields(item, f"{prefix}{f.name}.0.")
            else:
                yield prefix + f.name, item


LIST_KEYS = dict(list_fields())


def two_elements(item) -> list[str]:
    return [str(v) for v in typing.get_args(item)[:2]] if typing.get_origin(item) is Literal else ["q_proj", "v_proj"]


def test_the_list_keys_are_found_from_the_types():
    assert {"report_to", "probe.types", "model.peft.target_modules"} <= set(LIST_KEYS)


def get(cfg, key):
    for part in key.split("."):
        cfg = cfg[int(part)] if isinstance(cfg, list) else getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("key", list(LIST_KEYS))
def test_every_list_key_takes_brackets_commas_one_element_and_empty(key):
    a, b = two_elements(LIST_KEYS[key])
    forms = [f"{key}=[{a},{b}]", f"{key}={a},{b}", f"--{key}=[{a}, {b}]", f"--{key}={a},{b}", f"{key}=['{a}', \"{b}\"]"]
    for form in forms:
        assert get(load_config("smollm2_sft_dpo", [form]), key) == [a, b], form
    for form in (f"{key}={a}", f"{key}=[{a}]", f"--{key}=[{a}]"):
        assert get(load_config("smollm2_sft_dpo", [form]), key) == [a], form
    cfg = RunConfig(stages=[StageConfig(name="s", steps=1)])
    for form in (f"{key}=[]", f"--{key}=[ ]"):
        apply_override(cfg, form)
        assert get(cfg, key) == [], form


def test_the_readme_tracker_syntax_and_probe_types_in_brackets():
    cfg = load_config("smollm2_sft_dpo", ["report_to=[tensorboard]", "probe.types=[chosen,irr_test]"])
    assert cfg.report_to == ["tensorboard"] and cfg.probe.types == ["chosen", "irr_test"]


@dataclasses.dataclass
class Lists:
    ints: list[int] = dataclasses.field(default_factory=list)
    floats: list[float] = dataclasses.field(default_factory=list)
    flags: list[bool] = dataclasses.field(default_factory=list)


def test_list_elements_are_read_as_the_element_type():
    lists = Lists()
    for item in ("ints=[1, 2]", "floats=1e-5,2", "--flags=[true,no]"):
        apply_override(lists, item)
    assert lists == Lists([1, 2], [1e-5, 2.0], [True, False])
    assert from_dict(Lists, {"ints": "[3,4]", "floats": [0.5], "flags": "yes"}) == Lists([3, 4], [0.5], [True])


@pytest.mark.parametrize(
    "item,message",
    [
        ("ints=[1,x]", "field 'ints': expected an integer, got 'x'"),
        ("ints=1.5", "field 'ints': expected an integer, got '1.5'"),
        ("floats=[1e-5,lots]", "field 'floats': expected a number, got 'lots'"),
        ("ints=[1,2", "field 'ints': expected a list like [a,b] or a,b, got '[1,2'"),
    ],
)
def test_a_bad_list_element_names_the_key(item, message):
    with pytest.raises(LdynError) as e:
        apply_override(Lists(), item)
    assert str(e.value) == message


def test_a_yaml_list_reads_the_same_in_every_syntax(tmp_path):
    read = []
    for value in ("[tensorboard, wandb]", "tensorboard,wandb", '"[tensorboard,wandb]"'):
        path = tmp_path / "r.yaml"
        path.write_text(f"name: x\nreport_to: {value}\nstages:\n  - {{name: a, steps: 1}}\n")
        read.append(load_config(str(path)).report_to)
    assert read == [["tensorboard", "wandb"]] * 3


# ---------------------------------------------------------------- every field documented, every key listed


def settings_classes(cls=RunConfig, seen=None) -> list[type]:
    seen = [] if seen is None else seen
    seen.append(cls)
    for tp in typing.get_type_hints(cls).values():
        for inner in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(inner) and inner not in seen:
                settings_classes(inner, seen)
    return seen


def test_every_field_of_every_part_has_one_line_of_help():
    classes = settings_classes()
    assert {c.__name__ for c in classes} >= {"RunConfig", "StageConfig", "LossConfig", "PeftConfig", "SampleConfig"}
    for cls in classes:
        helps = field_help(cls)
        assert list(helps) == [f.name for f in dataclasses.fields(cls)]
        for name, text in helps.items():
            assert text.strip() and "\n" not in text, f"{cls.__name__}.{name} has no help"


def test_help_comes_from_the_comment_beside_or_above_a_field():
    helps = field_help(RunConfig)
    assert helps["checkpoint_every"] == "save a resumable checkpoint every k updates (0 = only at stage ends)"
    assert helps["compile"].startswith("torch.compile the decoder layers") and "eager model" in helps["compile"]
    assert field_help(PeftConfig)["target_modules"].endswith("(every linear layer but the output head)")


def leaf_keys(cls=RunConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            yield from leaf_keys(tp, f"{prefix}{f.name}.")
        elif item is not None and dataclasses.is_dataclass(item):
            yield from leaf_keys(item, f"{prefix}{f.name}.<i>.")
        else:
            yield prefix + f.name


def test_the_key_listing_covers_every_field_with_type_default_and_help():
    rows = keys(RunConfig())
    assert [r.key for r in rows] == list(leaf_keys())
    assert all(r.type and r.value and r.help for r in rows)
    by_key = {r.key: r for r in rows}
    assert by_key["probe.every"][:3] == ("probe.every", "int", "5")
    assert by_key["stages.<i>.optim.lr"][:3] == ("stages.<i>.optim.lr", "float", "1e-05")
    assert by_key["report_to"][1:3] == ("list[none|tensorboard|wandb|trackio]", "[none]")
    assert by_key["model.peft.r"].help.startswith("LoRA rank")
    recipe = {r.key: r.value for r in keys(load_config("smollm2_sft_dpo"))}
    assert recipe["stages.dpo.loss.name"] == "dpo" and recipe["stages.sft.loss.name"] == "sft"


def test_a_recipe_description_is_the_first_sentence_of_its_leading_comment(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# SPIN (Chen et al. 2024), i.e. self-play: y⁻ sampled. More\n# words.\nname: x\n")
    assert leading_comment(path) == "SPIN (Chen et al. 2024), i.e. self-play: y⁻ sampled"
    path.write_text("# Every experiment, then the report:\n#   ldyn run r data.train=x\n# Long. More.\nname: x\n")
    assert leading_comment(path) == "Every experiment, then the report"
    path.write_text("name: x  # no leading comment\n")
    assert leading_comment(path) == ""
