"""The 1M-hour cost model (millionhours/scale_model.py): its formulas and its CLI."""
import dataclasses
import json
from pathlib import Path

import pytest

from millionhours import scale_model as sm
from millionhours.bin import scale_model as cli

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")


def test_bytes_per_step_follow_the_collectives():
    s = sm.Setup(params=1_000_000, fired_fraction=0.01, block=10, group_size=4)
    dense = 4e6
    assert sm.link_bytes("sync", 1, s) == 0.0
    assert sm.link_bytes("sync", 16, s) == pytest.approx(2 * 15 / 16 * dense)
    assert sm.link_bytes("bmuf", 16, s) == pytest.approx(2 * 15 / 16 * dense / 10)
    assert sm.link_bytes("gtc", 16, s) == pytest.approx(15 * 4 * 0.01 * 1e6)
    # two tiers of 4 x 4: GTC among 4, one all-reduce over 4 groups per block
    assert sm.link_bytes("two_tier", 16, s) == pytest.approx(3 * 4e4 + 2 * 3 / 4 * dense / 10)
    with pytest.raises(ValueError, match="unknown algorithm"):
        sm.link_bytes("allgather", 4, s)


def test_projection_rows():
    s = sm.Setup()
    one = sm.project("sync", 1, 25.0, s)
    assert one["comm_ms"] == 0 and one["efficiency"] == 1.0
    frames = s.hours * sm.FRAMES_PER_HOUR
    assert one["gpu_hours"] == pytest.approx(frames / s.frames_per_s / 3600)
    r = {(x["algorithm"], x["workers"], x["gbps"]): x for x in sm.table(s)}
    # dense sync is link-bound at 25 Gb/s; BMUF sends 1/block of it; a faster link helps all
    assert r["sync", 64, 25.0]["efficiency"] < r["bmuf", 64, 25.0]["efficiency"]
    assert r["sync", 64, 25.0]["step_ms"] > r["sync", 64, 400.0]["step_ms"]
    # GTC's all-gather grows with N: its cost per step rises with the worker count
    assert r["gtc", 256, 25.0]["comm_ms"] > r["gtc", 16, 25.0]["comm_ms"]
    for x in r.values():
        assert x["gpu_hours"] == pytest.approx(x["epoch_wall_h"] * x["workers"])
        assert x["gpu_hours"] >= one["gpu_hours"] * (1 - 1e-9)


def test_cli_writes_json_table_and_figure(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "student_gtc_w2.json").write_text(json.dumps(
        {"distributed": {"algorithm": "gtc", "fired_fraction_mean": 0.002}}))
    (res / "student_interleaved.json").write_text(json.dumps({"steps": 10}))
    (res / "student_gtc_g16_momentum_p5.json").write_text(json.dumps(     # on request: not counted
        {"distributed": {"algorithm": "gtc", "fired_fraction_mean": 0.05}}))
    cli.main(["--params", PARAMS, "--from-results", str(res), "--out-dir", str(tmp_path / "out"),
              "--workers", "16", "64", "--bandwidth", "25"])
    out = json.loads((tmp_path / "out" / "scale_model.json").read_text())
    assert out["projection"] and out["setup"]["fired_fraction"] == 0.002
    assert "student_gtc_w2" in out["fired_fraction_source"] and len(out["rows"]) == 2 * 4
    md = (tmp_path / "out" / "scale_model.md").read_text()
    assert "Projection (not a measurement)" in md and md.count("\n| 25 Gb/s") == 8
    assert (tmp_path / "out" / "scale_model.png").stat().st_size > 1000
    # no GTC student to measure: the setup's fraction, and the files say so
    cli.main(["--params", PARAMS, "--from-results", str(tmp_path / "out"),
              "--out-dir", str(tmp_path / "o2")])
    out = json.loads((tmp_path / "o2" / "scale_model.json").read_text())
    assert out["setup"]["fired_fraction"] == sm.Setup().fired_fraction
    assert out["fired_fraction_source"].startswith("the default")


def test_cli_reads_params_block_and_rejects_bad_values(tmp_path):
    conf = tmp_path / "recipes" / "conf"
    conf.mkdir(parents=True)
    (conf / "default.yaml").write_text("{}\n")
    params = tmp_path / "params.yaml"
    params.write_text("scale_model: {block: 20, workers: [32], fired_fraction: 0.01}\n")
    cli.main(["--params", str(params), "--out-dir", str(tmp_path / "out"), "--bandwidth", "100"])
    out = json.loads((tmp_path / "out" / "scale_model.json").read_text())
    assert out["setup"]["block"] == 20 and out["fired_fraction_source"] == "params"
    assert [(r["workers"], r["gbps"]) for r in out["rows"]] == [(32, 100.0)] * 4
    params.write_text("scale_model: {blocks: 20}\n")
    with pytest.raises(SystemExit, match="unknown key.*blocks"):
        cli.main(["--params", str(params), "--out-dir", str(tmp_path / "o2")])
    params.write_text("scale_model: {fired_fraction: 2.0}\n")
    with pytest.raises(SystemExit, match="0 < fired_fraction < 1"):
        cli.main(["--params", str(params), "--out-dir", str(tmp_path / "o3")])
