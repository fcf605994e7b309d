import pytest

from components.config import ConfigError, load_params


def test_defaults_load_and_hash_is_stable():
    a, b = load_params(), load_params()
    assert a.hash() == b.hash()
    assert a.finetune.strategy == "adamw"


def test_override_changes_value_and_hash():
    base = load_params()
    p = load_params(overrides=["data.max_bad_fraction=0.1", "finetune.strategy=mezo"])
    assert p.data.max_bad_fraction == 0.1
    assert p.finetune.strategy == "mezo"
    assert p.hash() != base.hash()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("finetune.adamw.lr=abc", "finetune.adamw.lr"),
        ("data.nope=1", "data.nope"),
        ("gate.noise.method=coinflip", "gate.noise.method"),
        ("data.max_bad_fraction=2", "data.max_bad_fraction"),
        ("serve.port=[1]", "serve.port"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(overrides=[override])


def test_override_into_a_scalar_is_rejected():
    with pytest.raises(ConfigError, match="data.text_column is not a section"):
        load_params(overrides=["data.text_column.x=1"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_params(overrides=["finetune.strategy"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_unknown_section_in_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("bogus:\n  a: 1\n")
    with pytest.raises(ConfigError, match="bogus: unknown key"):
        load_params(f)


def test_code_defaults_equal_params_yaml(tmp_path):
    from components.config import DEFAULT_PARAMS, Params

    assert Params().model_dump(mode="json") == load_params(DEFAULT_PARAMS).model_dump(mode="json")
    # So a partial params file means "params.yaml's values for the rest", not other ones.
    partial = tmp_path / "params.yaml"
    partial.write_text("finetune:\n  strategy: mezo\n")
    p = load_params(partial)
    assert p.finetune.strategy == "mezo"
    assert p.model.pooling == load_params(DEFAULT_PARAMS).model.pooling


def test_named_options_are_overrides():
    from components.config import named_overrides

    assert named_overrides(data_path="x.csv", strategy="es", peft_method="lora",
                           pretrain=False, max_steps=7, nproc=2) == [
        "paths.raw=x.csv", "finetune.strategy=es", "peft.method=lora",
        "pretrain.enabled=false", "finetune.max_steps=7", "finetune.nproc=2"]
    assert named_overrides() == []


def test_fp16_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        load_params(overrides=["model.device=cpu", "finetune.precision=fp16"])
    assert load_params(overrides=["model.device=cpu", "finetune.precision=bf16"])
