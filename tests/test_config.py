import dataclasses

import pytest

from ldyn.config import RunConfig, dump_config, from_dict, load_config, read_yaml, recipe_names
from ldyn.errors import LdynError


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
