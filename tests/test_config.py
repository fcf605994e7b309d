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


def test_code_defaults_equal_params_yaml():
    """params.yaml is the single source of truth: the typed defaults must not drift from it."""
    from components.config import Params

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    code = dict(leaves(Params().model_dump(mode="json")))
    yaml_ = dict(leaves(load_params().model_dump(mode="json")))
    differ = {k: (code.get(k), yaml_.get(k)) for k in code.keys() | yaml_.keys()
              if code.get(k) != yaml_.get(k)}
    assert not differ, f"components/config.py defaults differ from params.yaml: {differ}"
