"""Recipe loading: inheritance, overrides, and load-time errors that name the key."""

import textwrap

import pytest

from maestro_megatron.config import ConfigError, load_recipe, recipe_to_dict


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_inheritance_and_overrides(tmp_path):
    _write(tmp_path, "base.yaml", """
        model: {num_layers: 4, hidden_size: 32}
        grpo: {group_size: 8, lr: 1.0e-4}
    """)
    child = _write(tmp_path, "child.yaml", """
        defaults: base.yaml
        grpo: {group_size: 4}
        conductor: {templates: [[1, 0], [0.5, 0.5]]}
        rewards: {components: [fmt, len]}
    """)
    recipe = load_recipe(child, ["model.num_layers=2", "grpo.kl_coef=0", "run.output_dir=x"])
    assert recipe.model.num_layers == 2 and recipe.model.hidden_size == 32
    assert recipe.grpo.group_size == 4 and recipe.grpo.lr == 1e-4
    assert recipe.grpo.kl_coef == 0.0 and isinstance(recipe.grpo.kl_coef, float)
    assert recipe.conductor.templates == ((1.0, 0.0), (0.5, 0.5))
    assert recipe.rewards.components == ("fmt", "len")
    assert recipe_to_dict(recipe)["rewards"]["components"] == ["fmt", "len"]
    with pytest.raises(AttributeError):
        recipe.grpo.lr = 1.0  # frozen


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path)


BAD_RECIPES = [
    ("grpo: {group_sizee: 4}", "grpo.group_sizee", "unknown key"),
    ("grpo: {lr: fast}", "grpo.lr", "expected a number"),
    ("grpo: {group_size: 1}", "grpo.group_size", ">= 2"),
    ("grpo: {group_size: true}", "grpo.group_size", "expected an integer"),
    ("conductor: {templates: [[0.5, 0.6, 0, 0, 0]]}", "conductor.templates[0]", "simplex"),
    ("conductor: {templates: [[1.5, -0.5, 0, 0, 0]]}", "conductor.templates[0]", "negative"),
    ("conductor: {templates: [[0.5, 0.5]]}", "conductor.templates[0]", "has 2 weights"),
    ("conductor: {tau: 0}", "conductor.tau", "> 0"),
    ("conductor: {p_min: 0.3}", "conductor.p_min", "1/J"),
    ("model: {num_attention_heads: 4}\nparallel: {tensor_parallel: 3}",
     "parallel.tensor_parallel", "does not divide model.num_attention_heads"),
    ("model: {num_layers: 3}\nparallel: {pipeline_parallel: 2}",
     "parallel.pipeline_parallel", "does not divide model.num_layers=3"),
    ("model: {num_query_groups: 3}", "model.num_query_groups", "does not divide"),
    ("rewards: {components: [ppl, funny]}", "rewards.components", "'funny'"),
    ("scalarizer: {name: single}", "scalarizer.component", "must be one of"),
    ("scalarizer: {name: magic}", "scalarizer.name", "'magic'"),
    ("grpo: {loss_agg: token-sum}", "grpo.loss_agg", "token-sum"),
    ("grpo: {kl_kind: k4}", "grpo.kl_kind", "k4"),
    ("rewards: {ent: {mode: sideways}}", "rewards.ent.mode", "sideways"),
    ("parallel: {sequence_parallel: true}", "parallel.sequence_parallel", "tensor_parallel > 1"),
    ("precision: {fp8: hybrid, transformer_impl: local}", "precision.fp8", "Transformer Engine"),
    ("grpo: [1, 2]", "grpo", "expected a mapping"),
    ("rollout: {top_p: 1.5}", "rollout.top_p", "(0, 1]"),
]


@pytest.mark.parametrize("text, key, fragment", BAD_RECIPES, ids=[b[1] for b in BAD_RECIPES])
def test_bad_recipe_names_the_key(tmp_path, text, key, fragment):
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert info.value.key == key
    assert str(info.value).startswith(key + ":")
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_bad_override_and_files(tmp_path):
    good = _write(tmp_path, "good.yaml", "run: {num_steps: 2}")
    with pytest.raises(ConfigError, match="grpo.nope: unknown key"):
        load_recipe(good, ["grpo.nope=1"])
    with pytest.raises(ConfigError, match="override must look like"):
        load_recipe(good, ["grpo.lr"])
    _write(tmp_path, "a.yaml", "defaults: b.yaml")
    _write(tmp_path, "b.yaml", "defaults: a.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad_yaml = _write(tmp_path, "broken.yaml", "grpo: {lr: [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(bad_yaml)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; users type it on the command line and
    # in recipes, so float fields accept it. Words stay errors.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("grpo: {lr: 1e-4}\n")
    r = load_recipe(recipe, ["conductor.lr=3E-3", "grpo.kl_coef=.5"])
    assert (r.grpo.lr, r.conductor.lr, r.grpo.kl_coef) == (1e-4, 3e-3, 0.5)
    with pytest.raises(ConfigError, match="grpo.lr: expected a number, got 'inf'"):
        load_recipe(recipe, ["grpo.lr=inf"])
