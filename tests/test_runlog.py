"""Stage timings (results/timing.json) from the recipe's log."""
from millionhours import runlog


def test_latest_line_per_stage_and_totals(tmp_path, capsys):
    log = tmp_path / "timing.tsv"
    log.write_text("setup\t100.0\t160.0\n"
                   "corpus\t200.0\t260.5\n"
                   "student@a\t300.0\t400.0\n"
                   "garbage line\n"
                   "corpus\t500.0\t530.0\n"            # a rerun: this one counts
                   "decode@gmm\t600.0\t590.0\n")       # end before start: skipped
    t = runlog.summarize(str(log), "abc123", cores=2)
    assert t["stages"] == {"setup": 60.0, "student@a": 100.0, "corpus": 30.0}
    assert t["total_s"] == 190.0 and t["wall_s"] == 430.0
    assert t["code_version"] == "abc123" and t["cores"] == 2
    assert "timing.tsv:4" in capsys.readouterr().out


def test_missing_log_is_empty(tmp_path):
    t = runlog.summarize(str(tmp_path / "none.tsv"), "x", cores=1)
    assert t["stages"] == {} and t["total_s"] == 0 and t["wall_s"] == 0.0
