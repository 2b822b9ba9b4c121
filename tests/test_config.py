import os

import pytest
import yaml

from millionhours import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_deep_merge_replaces_leaves_and_keeps_siblings():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    out = config.deep_merge(base, {"a": {"c": [9]}, "e": 5})
    assert out == {"a": {"b": 1, "c": [9]}, "d": 3, "e": 5}
    assert base["a"]["c"] == [1, 2]           # the input is not modified


@pytest.mark.parametrize("profile", ["tiny", "default", "paper"])
def test_every_profile_loads_and_only_overrides_known_keys(profile):
    params = config.load_params(os.path.join(ROOT, "params.yaml"), profile)
    assert params["profile"] == profile
    with open(os.path.join(ROOT, "recipes", "conf", f"{profile}.yaml")) as f:
        over = yaml.safe_load(f) or {}
    with open(os.path.join(ROOT, "params.yaml")) as f:
        base = yaml.safe_load(f)

    def known(o, b, path=""):
        for k, v in o.items():
            assert k in b, f"{profile}.yaml overrides unknown key {path}{k}"
            if isinstance(v, dict):
                known(v, b[k], f"{path}{k}.")
    known(over, base)


def test_profile_from_params_file(tmp_path):
    (tmp_path / "recipes" / "conf").mkdir(parents=True)
    (tmp_path / "recipes" / "conf" / "small.yaml").write_text("x: {y: 2}\n")
    (tmp_path / "params.yaml").write_text("profile: small\nx: {y: 1, z: 3}\n")
    assert config.load_params(str(tmp_path / "params.yaml")) == {"profile": "small", "x": {"y": 2, "z": 3}}


def test_unknown_profile_is_a_one_line_error(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: nope\n")
    with pytest.raises(SystemExit, match="unknown profile 'nope'"):
        config.load_params(str(tmp_path / "params.yaml"))


def test_num_jobs_zero_means_all_cores():
    assert config.num_jobs(0) == os.cpu_count()
    assert config.num_jobs(3) == 3


def test_run_variants_and_workspace_params():
    tiny = config.load_params(os.path.join(ROOT, "params.yaml"), "tiny")
    assert config.run_variants(tiny) == tiny["run_variants"]
    ws = config.workspace_params(tiny)
    assert ws["run_variants"] == tiny["run_variants"]              # dvc.yaml's foreach list
    assert ws["student_variants"] == tiny["student_variants"]      # the others stay runnable
    default = config.load_params(os.path.join(ROOT, "params.yaml"))
    assert set(config.run_variants(default)) < set(default["student_variants"])
    assert config.run_variants(dict(default, run_variants=None)) == list(default["student_variants"])
    with pytest.raises(SystemExit, match="nosuch not in student_variants"):
        config.run_variants(dict(tiny, run_variants=["interleaved", "nosuch"]))
