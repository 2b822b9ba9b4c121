"""The paper's claims as tables, generated from ``results/*.json`` (never edited by hand).

Each table names the runs (student variants of params.yaml, decoded by stage 7) it is made of,
puts the paper's number or claim beside ours, and judges the claim by the pass criteria of
../shared/research/paper.md section 4 (R1-R5). A run that has not been made shows as "not run"
with the command that makes it, so the tables of a partial pipeline are still honest.

WERR = (WER_baseline - WER_system) / WER_baseline, per test set; every WER comes from the same
graph and decoder, with the acoustic scale chosen on dev. Every WERR and every "A beats B"
verdict carries a 95% interval from the paired bootstrap of scoring.py over the test utterances
(the ``utt_errors`` of the result JSONs), combined with the seed spread where seeds exist; a
claim passes only when its interval excludes zero in the claimed direction ("no worse" claims:
excludes a loss beyond ``MARGIN``). Results without per-utterance counts (older code) show the
point estimate, judged as before, and say so.
"""
import glob
import json
import math
import os
import statistics

from millionhours import scoring
from millionhours.config import lookup

# test_unseen_voice: the clean speech of a base voice that no training set contains
TEST_SETS = ("test_clean", "test_noisy", "test_unseen_voice")
SETS = ("dev",) + TEST_SETS
SHORT = {"dev": "dev", "test_clean": "clean", "test_noisy": "noisy", "test_unseen_voice": "unseen voice"}
MISSING = "–"
MARGIN = 0.02              # "no worse" claims (R2, R4): a loss of at most 2% relative
NO_COUNTS = "no per-utterance counts"
Z95 = statistics.NormalDist().inv_cdf(0.975)
INTERVALS = ("Intervals: 95%, paired bootstrap over the test utterances (Bisani & Ney 2004, "
             f"B = {scoring.REPLICATES}) combined with the seed spread where seeds exist; a claim passes only when "
             "its interval excludes zero in the claimed direction")


# --------------------------------------------------------------------------- reading results


class Results:
    """Every ``*.json`` of a results dir, by file stem (``student_interleaved__test_clean``)."""

    def __init__(self, results_dir: str):
        self.dir = results_dir
        self.runs = {}
        self._compared: dict[tuple[str, str, str], scoring.Comparison | str] = {}
        for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
            with open(path) as f:
                self.runs[os.path.basename(path)[:-5]] = json.load(f)

    def get(self, name: str) -> dict | None:
        return self.runs.get(name)

    def wer(self, model: str, dset: str) -> float | None:
        r = self.runs.get(f"{model}__{dset}")
        return None if r is None or r.get("wer") is None else float(r["wer"])

    def seeds(self, model: str) -> list[str]:
        """The model and its seed replicas (``<model>_seed<N>``), those that were decoded."""
        names = [model] + sorted(m[:-len("__test_clean")] for m in self.runs
                                 if m.startswith(f"{model}_seed") and m.endswith("__test_clean"))
        return [n for n in names if self.wer(n, "test_clean") is not None]

    def wer_stats(self, model: str, dset: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std or None, n) of the WER over the model's seed replicas."""
        vals = [self.wer(n, dset) for n in self.seeds(model)]
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None, 0
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)

    def counts(self, model: str, dset: str) -> list[dict] | None:
        """The per-utterance counts (``utt_errors``) of every seed replica that :meth:`wer_stats`
        averages; None when there is none or one lacks them (decoded by older code)."""
        runs = [self.runs.get(f"{n}__{dset}") for n in self.seeds(model)]
        runs = [r for r in runs if r is not None and r.get("wer") is not None]
        if not runs or any("utt_errors" not in r for r in runs):
            return None
        return [r["utt_errors"] for r in runs]

    def compare(self, base: str, system: str, dset: str) -> scoring.Comparison | str:
        """``system`` against ``base`` on ``dset`` (paired bootstrap over the seed replicas of
        both), or why there is no interval. Cached: T1, T2 and F1 share comparisons."""
        key = (base, system, dset)
        if key not in self._compared:
            b, s = self.counts(base, dset), self.counts(system, dset)
            try:
                self._compared[key] = NO_COUNTS if b is None or s is None else \
                    scoring.paired_bootstrap(b, s)
            except ValueError:              # e.g. decoded on different versions of the test set
                self._compared[key] = "per-utterance counts of different utterances"
        return self._compared[key]


def werr(base: float | None, system: float | None) -> float | None:
    if base is None or system is None or base == 0:
        return None
    return (base - system) / base


def fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    return MISSING if x is None else f"{x:{spec}}{suffix}"


def pct(x, digits: int = 1) -> str:
    return fmt(None if x is None else 100 * x, f"+.{digits}f", "%")


def share(x, digits: int = 1) -> str:
    """A fraction as an unsigned percentage."""
    return fmt(None if x is None else 100 * x, f".{digits}f", "%")


def with_ci(x: float | None, ci: tuple[float, float] | None, unit: str = "%") -> str:
    """A fraction and its interval in percent: '+16.2% [+9.8, +22.1]'."""
    if x is None or ci is None:
        return MISSING
    return f"{100 * x:+.1f}{unit} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def werr_text(res: Results, base: str, system: str, dset: str) -> str | None:
    """The WERR of ``system`` over ``base`` with its interval, or the point alone when there is
    no interval (then the caller says why); None when either was not run."""
    w = werr(res.wer_stats(base, dset)[0], res.wer_stats(system, dset)[0])
    if w is None:
        return None
    c = res.compare(base, system, dset)
    return pct(w) if isinstance(c, str) else with_ci(c.werr, c.werr_ci)


def werr_cell(res: Results, base: str, system: str, dset: str) -> str:
    """A table's WERR cell: '+16.2% [+9.8, +22.1]', or '+16.2% (no interval)'."""
    text = werr_text(res, base, system, dset)
    if text is None:
        return MISSING
    return text if isinstance(res.compare(base, system, dset), scoring.Comparison) else \
        f"{text} (no interval)"


def judge(res: Results, base: str, system: str, sets: tuple[str, ...] = TEST_SETS,
          margin: float = 0.0) -> tuple[bool | None, str]:
    """Does ``system`` beat ``base`` on every set (``margin`` 0), or lose at most ``margin``
    relative? (verdict, 'clean +5.0% [+1.2, +8.9], noisy ...'); verdict None when a run is missing.

    The WERR interval's lower end must lie above -margin on every set; where a set has no
    interval the point estimates are judged (as before the bootstrap) and the text says so.
    """
    texts = [werr_text(res, base, system, d) for d in sets]
    if None in texts:
        return None, ""
    text = ", ".join(f"{SHORT[d]} {t}" for d, t in zip(sets, texts))
    cmps = [res.compare(base, system, d) for d in sets]
    why = sorted({c for c in cmps if isinstance(c, str)})
    if why:
        points = [werr(res.wer_stats(base, d)[0], res.wer_stats(system, d)[0]) for d in sets]
        return all(w > -margin for w in points), f"{text} ({'; '.join(why)})"
    return all(c.werr_ci is not None and c.werr_ci[0] > -margin for c in cmps), text


def judge_larger(res: Results, base: str, system: str, more: str, less: str) -> tuple[bool | None, str]:
    """Is the WERR of ``system`` over ``base`` larger on set ``more`` than on set ``less``? The
    two sets are different utterances, so their bootstraps are independent: the difference gets
    a normal interval from the two standard errors (conservative where the seeds' effects are
    shared by the sets, which correlates the two WERRs positively)."""
    a, b = res.compare(base, system, more), res.compare(base, system, less)
    wa, wb = (werr(res.wer_stats(base, d)[0], res.wer_stats(system, d)[0]) for d in (more, less))
    if wa is None or wb is None:
        return None, ""
    name = f"{SHORT[more]} - {SHORT[less]}"
    if isinstance(a, str) or isinstance(b, str) or None in (a.werr, b.werr):
        why = a if isinstance(a, str) else b if isinstance(b, str) else NO_COUNTS
        return wa > wb, f"{name} {100 * (wa - wb):+.1f} points ({why})"
    d, se = a.werr - b.werr, math.hypot(a.werr_se, b.werr_se)
    ci = (d - Z95 * se, d + Z95 * se)
    return ci[0] > 0, f"{name} {with_ci(d, ci, ' points')}"


def wer_cell(res: Results, model: str, dset: str) -> str:
    mean, std, n = res.wer_stats(model, dset)
    if n == 0:
        return "not run"
    return f"{mean:.2f}" + (f" ± {std:.2f} (n={n})" if std is not None else "")


def verdict(ok: bool | None) -> str:
    return {True: "**pass**", False: "**fail**", None: "not run"}[ok]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def made(res: Results, variants: list[str]) -> list[str]:
    """The variants that were trained and decoded; all of them when none was (so an empty
    results dir still shows every row as "not run")."""
    have = [v for v in variants if res.wer(f"student_{v}", "test_clean") is not None]
    return have or list(variants)


def on_request(res: Results, variants: list[str]) -> list[str]:
    """A line naming the table's variants this run did not make (they run on request)."""
    missing = [v for v in variants if v not in made(res, variants)]
    return [f"Not in this run (on request, params `run_variants`): {', '.join(missing)}.", ""] \
        if missing else []


def make_cmd(variants: list[str]) -> str:
    stages = " ".join(f"student@{v} decode_student@{v}" for v in variants)
    return f"`dvc repro {stages}`"


# --------------------------------------------------------------------------- the tables


def t0_pipeline(res: Results) -> list[str]:
    """What stages 2-5 and 7 built, and the two baselines every network is measured against."""
    ali, imp, tea = res.get("alignment"), res.get("import"), res.get("teacher")
    fb, lab, dense, lm = (res.get("frame_baselines"), res.get("labels"), res.get("labels_dense"),
                          res.get("lm"))
    bnd = lookup(ali, 'align.boundaries')
    sen, ph = lookup(fb, 'senone_frame_acc') or {}, lookup(fb, 'phone_frame_acc') or {}
    ngrams = lookup(lm, 'ngrams') or {}
    dropped = lookup(imp, 'utterances.dropped')
    rows = [
        ["2 GMM (`exp/tri`)", f"{fmt(lookup(ali, 'tri.pdfs'), ',d')} pdfs "
         f"({fmt(lookup(ali, 'tri.leaves_before_merge'), ',d')} leaves before merging), "
         f"{fmt(lookup(ali, 'tri.gaussians'), ',d')} Gaussians, trained on "
         f"{fmt(lookup(ali, 'utterances'), ',d')} utterances"],
        ["2 alignments against the synthesizer's phone times",
         f"{share(lookup(bnd, 'within_20ms'))} of {fmt(lookup(bnd, 'boundaries_compared'), ',d')} "
         f"boundaries within 20 ms, mean abs. error {fmt(lookup(bnd, 'mean_abs_error_ms'), '.1f')} ms"],
        ["3 targets (train_labeled)", f"{fmt(lookup(imp, 'utterances.imported'), ',d')} utterances, "
         f"{fmt(lookup(imp, 'frames.lfr'), ',d')} LFR frames, {fmt(lookup(imp, 'senones.seen'), ',d')} of "
         f"{fmt(lookup(imp, 'senones.total'), ',d')} senones seen, "
         f"{MISSING if dropped is None else sum(dropped.values())} dropped"],
        ["4 teacher", f"{lookup(tea, 'model') or MISSING}; best of {fmt(lookup(tea, 'epochs'), 'd')} epochs: "
         f"{fmt(lookup(tea, 'best_epoch'), 'd')}, dev CE {fmt(lookup(tea, 'dev_ce'), '.3f')}, dev frame "
         f"accuracy {share(lookup(tea, 'dev_frame_acc'))}, {fmt(lookup(tea, 'frames_per_s'), ',.0f')} "
         f"frames/s, torch threads {fmt(lookup(tea, 'torch_threads'), 'd')}"],
        ["4 frame accuracy on dev (same LFR frames)",
         f"senone: teacher {share(sen.get('model'))}, triphone-GMM classifier "
         f"{share(sen.get('tri_gmm'))}, majority {share(sen.get('majority'))}; "
         f"phone: teacher {share(ph.get('model'))}, monophone GMM "
         f"{share(ph.get('mono_gmm'))}, triphone GMM {share(ph.get('tri_gmm'))}"],
        ["5 top-k labels (train_unlabeled)", f"{fmt(lookup(lab, 'utterances'), ',d')} utterances, "
         f"{fmt(lookup(lab, 'frames'), ',d')} frames, k = {fmt(lookup(lab, 'k'), 'd')}, "
         f"{fmt(lookup(lab, 'bytes_per_frame'), 'd')} bytes/frame; top-1 = oracle alignment on "
         f"{share(lookup(lab, 'oracle.top1_agreement'))} of "
         f"{fmt(lookup(lab, 'oracle.frames'), ',d')} frames; {fmt(lookup(lab, 'wall_s'), ',.0f')} s"],
        ["5 dense store", f"{fmt(None if dense is None else dense['store_bytes'] / 1e9, '.2f')} GB "
         f"({fmt(lookup(dense, 'bytes_per_frame'), ',d')} bytes/frame), {fmt(lookup(dense, 'wall_s'), ',.0f')} s"],
        ["7 LM and graph", f"KN {fmt(lookup(lm, 'lm.order'), 'd')}-gram, "
         f"{' / '.join(f'{n:,}' for n in ngrams.values()) or MISSING} n-grams; perplexity "
         + ", ".join(f"{x} {fmt(lookup(lm, f'eval.{x}.ppl'), '.0f')} (OOV "
                     f"{share(lookup(lm, f'eval.{x}.oov_rate'), 2)})" for x in SETS)
         + f"; HCLG {fmt(lookup(lm, 'hclg.states'), ',d')} states, {fmt(lookup(lm, 'hclg.arcs'), ',d')} "
         f"arcs, built in {fmt(lookup(lm, 'build_s'), ',.0f')} s"],
    ]
    base = [[m, *[wer_cell(res, m, x) for x in SETS],
             fmt(lookup(res.get(f"{m}__dev"), 'acwt'), "g")] for m in ("gmm", "teacher")]
    gmm, teacher = res.wer("gmm", "test_clean"), res.wer("teacher", "test_clean")
    ok, gain = judge(res, "gmm", "teacher", ("test_clean",))
    lines = ["## T0 The pipeline and its baselines", "",
             "What stages 2-5 and 7 built (from `alignment.json`, `import.json`, `teacher.json`, "
             "`frame_baselines.json`, `labels*.json`, `lm.json`).", ""]
    lines += md_table(["stage", "measured"], rows)
    lines += ["", "The baselines, decoded through the same graph (WER %; acoustic scale chosen on dev):", ""]
    lines += md_table(["model", *SETS, "acwt"], base)
    lines += ["", f"The teacher below the GMM on test_clean (issue 5): {verdict(ok)} "
              f"(teacher {fmt(teacher)}, GMM {fmt(gmm)}" + (f"; WERR {gain})" if gain else ")"),
              "", INTERVALS + ".", "",
              "Regenerate: `dvc repro decode@gmm decode@teacher labels`", ""]
    return lines


def t1_main(res: Results) -> list[str]:
    """R1: interleaved student vs the same student on labeled data only."""
    models = [("teacher", "teacher (BLSTM, labeled only)"),
              ("student_labeled_only", "student, labeled only"),
              ("student_interleaved", "student, labeled + machine-labeled (interleaved)")]
    rows = [[label] + [wer_cell(res, m, s) for s in SETS] for m, label in models]
    base, student = "student_labeled_only", "student_interleaved"
    rows.append(["WERR interleaved vs labeled only (paper: 10-22%)"]
                + [werr_cell(res, base, student, s) for s in SETS])
    gains_ok, gains = judge(res, base, student)
    noisier_ok, noisier = judge_larger(res, base, student, "test_noisy", "test_clean")
    ok = None if None in (gains_ok, noisier_ok) else gains_ok and noisier_ok
    lines = ["## T1 Main result (R1)", "",
             "WER % per set (mean ± sample std over seeds where several were run).", ""]
    lines += md_table(["model", *SETS], rows)
    lines += ["", f"R1 (WERR > 0 on every test set and larger on the noisier set): {verdict(ok)}"
              + ("" if ok is None else f" (WERR {gains}; {noisier})"),
              "", INTERVALS + ".", "",
              "Regenerate: " + make_cmd(["labeled_only", "interleaved"]) + " `decode@teacher`", ""]
    return lines


def t2_schedules(res: Results) -> list[str]:
    """R3: interleaved vs segregated (both orders) and the labeled-LR multiplier."""
    base = "student_labeled_only"
    every = [("interleaved", "interleaved, labeled lr x2"),
             ("segregated", "segregated, machine-labeled first"),
             ("segregated_lf", "segregated, labeled first"),
             ("lr1", "interleaved, labeled lr x1"),
             ("lr4", "interleaved, labeled lr x4")]
    names = made(res, [v for v, _ in every])
    runs = [r for r in every if r[0] in names]
    mean = {m: [res.wer_stats(m, s)[0] for s in TEST_SETS]
            for m in [base] + [f"student_{v}" for v, _ in runs]}
    gain = {m: [werr(b, w) for b, w in zip(mean[base], mean[m])] for m in mean}
    rows = [[label] + [wer_cell(res, f"student_{v}", s) for s in SETS]
            + [werr_cell(res, base, f"student_{v}", s) for s in TEST_SETS] for v, label in runs]
    checks = []
    for v in [v for v in ("segregated", "segregated_lf") if v in names]:
        ok, text = judge(res, f"student_{v}", "student_interleaved")
        ratios = [a / b if a is not None and b else None
                  for a, b in zip(gain["student_interleaved"], gain[f"student_{v}"])]
        checks.append(f"- interleaved beats {v.replace('_lf', ' (labeled first)')} on every test set: "
                      f"{verdict(ok)}" + (f" (WERR over it: {text})" if text else "")
                      + "; WERR ratio interleaved / segregated (paper 1.23): "
                      + ", ".join(f"{SHORT[s]} {fmt(r)}" for s, r in zip(TEST_SETS, ratios)))
    # the paper's higher LR on labeled minibatches: each step up the multiplier should help
    for low, high, what in (("lr1", "interleaved", "x2 beats x1"), ("interleaved", "lr4", "x4 beats x2")):
        if low not in names or high not in names:
            continue
        ok, text = judge(res, f"student_{low}", f"student_{high}")
        checks.append(f"- labeled lr {what} on every test set: {verdict(ok)}"
                      + (f" (WERR: {text})" if text else ""))
    lines = ["## T2 Scheduled learning (R3)", "",
             "WER % and WERR over the labeled-only student. The interleave ratio is the natural "
             "one (stream sizes), recorded in each student's JSON (`schedule`).", ""]
    lines += md_table(["schedule", *SETS, *(f"WERR {SHORT[s]}" for s in TEST_SETS)], rows)
    lines += ["", *checks, "", INTERVALS + ".", "", *on_request(res, [v for v, _ in every]),
              "Regenerate: " + make_cmd([v for v, _ in every]), ""]
    return lines


# T3 at the paper's worker counts: (reference run, dense sync run, prefixes of the compressed
# runs, workers, the bytes goal, the WER goal, the local optimizer). A fixed global batch: N
# workers share each batch of the one-process reference, so all take the same updates
# (distributed.protocol global_batch). Runs named *_sgd train with SGD and meet their own reference.
PAPER_SCALE = (("global16", "sync_g16", ("gtc_g16",), 16, 20, MARGIN, "adam"),  # GTC: 16 GPUs
               ("global64", "sync_g64", ("bmuf_g64", "two_tier_g64"), 64, 10, 0.05, "adam"),
               ("global64_sgd", "sync_g64_sgd", ("bmuf_g64",), 64, 10, 0.05, "sgd"))  # BMUF: 64


def run_cmd(variants: list[str]) -> str:
    """The commands that train and decode variants outside `run_variants` (no DVC stage); stage
    7 takes --models, so the graph and the other models' decodes are reused as they are."""
    models = " ".join(f"student_{v}" for v in variants)
    return (f"`bash recipes/run.sh --stage 6 --stop-stage 6 --variants \"{' '.join(variants)}\"`, "
            f"then `--stage 7 --stop-stage 7 --models \"{models}\"` and `--stage 8`")


def algorithm_label(d: dict) -> str:
    """A student JSON's `distributed` block in a few words: GTC's form and warm-up, BMUF's block,
    block momentum and whether the local momentum (SGD's, Adam's first moment) is reset at each
    sync; two-tier both."""
    def gtc(g):
        return f"{g['form']}, warm-up {g.get('dense_warmup', 0)}" if g.get("form") else ""

    def bmuf(b):
        return (f"block {b['block']}, eta {b['eta']:.3g}, "
                f"local momentum {'reset' if b.get('reset_momentum', True) else 'kept'}")
    algo = d.get("algorithm", MISSING)
    if algo == "gtc" and gtc(d):
        return f"gtc ({gtc(d)})"
    if algo == "bmuf" and "block" in d:
        return f"bmuf ({bmuf(d)})"
    if algo == "two_tier" and "gtc" in d and "bmuf" in d:
        return (f"two-tier {d['groups']}x{d['group_size']}: gtc ({gtc(d['gtc'])}) in groups, "
                f"bmuf ({bmuf(d['bmuf'])}) across")
    return algo


def t3_paper_scale(res: Results) -> list[str]:
    """R4/R5 at 16 (GTC) and 64 (BMUF, two-tier) simulated workers, at a fixed global batch."""
    rows, checks = [], []
    for ref, sync, prefixes, n, fewer, margin, opt in PAPER_SCALE:
        runs = [ref, sync] + sorted(k[len("student_"):] for k in res.runs
                                    if k.startswith(tuple(f"student_{p}" for p in prefixes))
                                    and "__" not in k and k.endswith("_sgd") == (opt == "sgd"))
        if opt != "adam" and not any(res.get(f"student_{v}") for v in runs):
            continue                                 # an optimizer ablation shows once it has run
        for v in runs:
            s = res.get(f"student_{v}") or {}
            d = s.get("distributed") or {}
            what = algorithm_label(d) if d else ("none" if v == ref else MISSING)
            what += f", {opt.upper()}" if opt != "adam" and v != sync else ""
            fired = (d.get("gtc") or d).get("fired_fraction_mean")
            ratio = d.get("ratio_to_dense")
            rows.append([v, 1 if v == ref else n, what, MISSING if fired is None else share(fired, 2)]
                        + [wer_cell(res, f"student_{v}", x) for x in SETS]
                        + [share(ratio, 2) if ratio is not None else MISSING,
                           fmt(1 / ratio if ratio else None, ",.0f", "x"), fmt(s.get("steps"), "d")]
                        + [werr_cell(res, f"student_{ref}", f"student_{v}", x)
                           for x in ("test_clean", "test_noisy")])
        goal_sets = ("test_clean", "test_noisy")
        ok, text = judge(res, f"student_{ref}", f"student_{sync}", goal_sets, margin=MARGIN)
        checks.append(f"- {n} workers{'' if opt == 'adam' else ' with ' + opt.upper()}, dense sync "
                      f"= one process (no loss beyond "
                      f"{100 * MARGIN:g}%): {verdict(ok)}" + (f" ({text})" if text else ""))
        base = sync if res.wer(f"student_{sync}", "test_clean") is not None else ref
        for v in runs[2:]:
            d = (res.get(f"student_{v}") or {}).get("distributed") or {}
            ratio = d.get("ratio_to_dense")
            bytes_ok = None if not ratio else 1 / ratio >= fewer
            wer_ok, text = judge(res, f"student_{base}", f"student_{v}", goal_sets, margin=margin)
            both = None if None in (bytes_ok, wer_ok) else bytes_ok and wer_ok
            checks.append(f"- {v}: {fmt(1 / ratio if ratio else None, ',.0f', 'x')} fewer bytes "
                          f"than dense (goal >= {fewer}x) and WERR over {base} {text or MISSING} "
                          f"(goal: no loss beyond {100 * margin:g}%): {verdict(both)}")
    lines = ["## T3 Distributed training at the paper's worker counts (R4, R5)", "",
             "The interleaved student on 16 (GTC, as the paper) and 64 (BMUF) workers, simulated "
             "in one process (distributed.transport simulated: the algorithm code of the torchrun "
             "path, bit-identical to it at 2 workers). Fixed global batch: the N workers share "
             "each batch of the one-process reference (global16: 16 pieces of 200 frames, one per "
             "worker; global64: 64), so every run takes the same updates at the same learning "
             "rate and stops by the students' rule (at 64: a 512-update budget). fired: GTC's "
             "mean share of the weights sent per worker and step; of dense: bytes one worker "
             "sends per step over the run (dense warm-up included) against the all-reduced "
             "gradient; WERR over the one-process run.",
             ""]
    lines += md_table(["run", "workers", "algorithm", "fired", *SETS, "of dense", "fewer",
                       "steps", "WERR clean", "WERR noisy"], rows)
    lines += ["", "Goals (issue 22): GTC at 16 workers >= 20x fewer bytes and within 2% relative "
              "WER of dense sync; BMUF at 64 >= 10x fewer and within 5%, on test_clean and "
              "test_noisy.", "", *checks, "", f"{INTERVALS}; a 'no loss beyond' claim, when its "
              "interval excludes a larger loss.", "",
              "Not in the one-sitting default (a 16-worker run is ~30,000 worker-steps of ~40 ms: "
              "~20 min of one core; a 64-worker run of 512 updates ~21 min). Run: " + run_cmd(
                  ["global16", "sync_g16", "gtc_g16_update", "gtc_g16_momentum",
                   "gtc_g16_momentum_r100", "gtc_g16_momentum_p5", "gtc_g16_update_p5",
                   "gtc_g16_gradient"]) + "; at 64: " + run_cmd(
                  ["global64", "bmuf_g64_b10", "bmuf_g64_b10_eta05", "bmuf_g64_b10_eta05_keep",
                   "bmuf_g64_b10_eta0875", "bmuf_g64_b10_etaN", "two_tier_g64", "global64_sgd",
                   "bmuf_g64_b10_sgd", "bmuf_g64_b50_sgd"]), "",
              "Bytes against WER of the GTC forms: results/t3_gtc_bytes_wer.png. The paper's "
              "scale, projected (a cost model, not a run): results/scale_model.md.", ""]
    return lines


def t3_distributed(res: Results) -> list[str]:
    """R4/R5: sync vs GTC vs BMUF at 1, 2 and 4 workers."""
    grid = [(f"{a}_w{n}", n, a) for n in (2, 4) for a in ("sync", "gtc", "bmuf")]
    ablations = [
        ("gtc_w2_p1", 2, "gtc"),      # fired fraction 1% instead of 0.1%
        ("bmuf_w4_eta0", 4, "bmuf"),  # R4's ablation: plain model averaging (eta = 0)
        ("sync_w2_sgd", 2, "sync"), ("gtc_w2_sgd", 2, "gtc")]     # Strom's optimizer: SGD momentum
    # rows for what was run (the default runs the 2-worker sync/GTC pair; the rest on request)
    runs = [("interleaved", 1, "none")] + ([r for r in grid + ablations if res.get(f"student_{r[0]}")]
                                           or grid)
    rows, by = [], {}
    for v, n, algo in runs:
        s = res.get(f"student_{v}") or {}
        d = s.get("distributed") or {}
        by[v] = s
        wall = d.get("wall_s") or s.get("train_s")
        rows.append([v, n, algo] + [wer_cell(res, f"student_{v}", x) for x in SETS] + [
            fmt(d.get("bytes_per_step"), ",.0f"), share(d.get("ratio_to_dense"), 2)
            if d else MISSING, fmt(d.get("syncs"), "d"), fmt(s.get("steps"), "d"),
            fmt(wall, ",.0f"), fmt(s.get("frames_per_s"), ",.0f")])
    checks = []
    judged = [("gtc", 2, ""), ("bmuf", 2, ""), ("gtc", 4, ""), ("bmuf", 4, ""), ("gtc", 2, "_sgd")]
    # a pair is judged when its run exists (all four when nothing ran: "not run")
    judged = [j for j in judged if by.get(f"{j[0]}_w{j[1]}{j[2]}")] or judged[:4]
    for algo, n, sfx in judged:
        s = by.get(f"{algo}_w{n}{sfx}") or {}
        d = s.get("distributed") or {}
        # GTC: 1% of dense; BMUF: one model all-reduce per full block, nothing else
        bound = 0.01 if algo == "gtc" else 1 / d.get("block", 50)
        bytes_ok = None if not d else d["ratio_to_dense"] <= bound * (1 + 1e-9)
        wer_ok, text = judge(res, f"student_sync_w{n}{sfx}", f"student_{algo}_w{n}{sfx}",
                             margin=MARGIN)
        bound_txt = f"{100 * bound:g}%" if algo == "gtc" else f"1/block = {100 * bound:g}%"
        run = f"{n} workers, {algo}" + (" (SGD)" if sfx else "")
        checks.append(f"- {run}: bytes/step {share(d.get('ratio_to_dense'), 2)} of "
                      f"dense (bound {bound_txt}) {verdict(bytes_ok)}; WERR over sync "
                      f"{text or MISSING} (no loss beyond {100 * MARGIN:g}% relative: "
                      f"{verdict(wer_ok)})")
    lines = ["## T3b Distributed training, equal epochs (a scaling study)", "",
             "The interleaved student on 1, 2 and 4 gloo workers (torchrun, one machine), each worker "
             "taking batches of its own (distributed.protocol equal_epochs: N x fewer updates per "
             "epoch at the same learning rate, unlike T3's fixed global batch). bytes/step: "
             "what one worker sends per step (dense = the all-reduced gradient); wall: training "
             "seconds of the whole run; frames/s per worker. Every run stops by the students' "
             "rule (a worker sees 1/N of each epoch, so an update carries N batches); rows for "
             "the runs made (the default: the 2-worker sync/GTC pair; BMUF and 4 workers on "
             "request).", ""]
    lines += md_table(["run", "workers", "algorithm", *SETS, "bytes/step", "of dense", "syncs",
                       "steps/worker", "wall s", "frames/s"], rows)
    lines += ["", *checks, "", f"{INTERVALS}; a 'no loss beyond {100 * MARGIN:g}%' claim, when "
              f"its interval excludes a loss larger than that.", "",
              "Paper: BMUF slightly worse than GTC, GTC about equal to sync; "
              "BMUF syncs 1/50 as often.", "", *on_request(res, [v for v, _, _ in grid]),
              "Regenerate: " + make_cmd([v for v, _, _ in runs]), ""]
    return lines


def t4_topk(res: Results) -> list[str]:
    """R2: top-k targets vs full posteriors."""
    every = [("k1", "1"), ("k5", "5"), ("interleaved", "20 (default)"), ("dense", "full")]
    names = made(res, [v for v, _ in every])
    runs = [r for r in every if r[0] in names]
    store = res.get("labels") or {}
    rows = []
    for v, k in runs:
        s = res.get(f"student_{v}") or {}
        kk = (s.get("machine") or {}).get("k_used")
        bpf = None
        if kk:
            bpf = 4 * kk if v != "dense" else (s.get("machine") or {}).get("store", {}).get("bytes_per_frame")
        rows.append([k] + [wer_cell(res, f"student_{v}", x) for x in SETS] + [fmt(bpf, "d")])
    lines = ["## T4 Top-k teacher targets (R2)", "",
             "The interleaved student trained on the teacher's top k posteriors per 30 ms frame "
             "(renormalised over the k). bytes/frame: float16 log-posterior + uint16 id per kept "
             f"entry; dense float32 at {store.get('num_senones', MISSING)} senones = "
             f"{store.get('dense_float32_bytes_per_frame', MISSING)} B/frame. Paper: top-20 loses "
             "nothing, flat from k ~ 10-20 up.", ""]
    lines += md_table(["k", *SETS, "bytes/frame"], rows)
    lines += ["", r2_verdict(res), "", f"{INTERVALS}; a 'no worse' claim, when its interval "
              f"excludes a loss larger than {100 * MARGIN:g}% relative.", "",
              *on_request(res, [v for v, _ in every]),
              "Regenerate: " + make_cmd([v for v, _ in every]), ""]
    return lines


def r2_verdict(res: Results) -> str:
    """R2: top-20 no worse than full posteriors beyond run-to-run noise: the WERR interval of
    top-20 over full (seed spread included) excludes a loss beyond 2% relative, as T3. Without
    per-utterance counts, the point estimates against the top-20 runs' seed std where there are
    seeds, else 2% relative."""
    ok, text = judge(res, "student_dense", "student_interleaved", margin=MARGIN)
    if ok is not None and all(isinstance(res.compare("student_dense", "student_interleaved", d),
                                         scoring.Comparison) for d in TEST_SETS):
        return (f"- R2, top-20 no worse than full posteriors (no loss beyond {100 * MARGIN:g}% "
                f"relative) on every test set: {verdict(ok)}: WERR of top-20 over full {text}")
    parts, oks, seeded = [], [], False
    for dset in TEST_SETS:
        top, std, _ = res.wer_stats("student_interleaved", dset)
        full = res.wer_stats("student_dense", dset)[0]
        if top is None or full is None:
            oks.append(None)
            continue
        seeded = std is not None
        oks.append(top - full <= (std if seeded else 0.02 * full))
        parts.append(f"{dset} {top:.2f}{f' ± {std:.2f}' if seeded else ''} vs full {full:.2f} "
                     f"({top - full:+.2f}, {pct(-werr(full, top))} rel.)")
    ok = None if None in oks else all(oks)
    noise = "the top-20 seeds' std" if seeded else "2% relative"
    return (f"- R2, top-20 no worse than full posteriors beyond run-to-run noise ({noise}) on "
            f"every test set: {verdict(ok)}" + (f": {'; '.join(parts)} ({NO_COUNTS})"
                                                 if ok is not None else
                                                 " (needs the `dense` variant on a dense store, "
                                                 "`labels.dense`)"))


def t5_models(res: Results) -> list[str]:
    """Teacher vs student: size, speed, latency class."""
    rows = []
    for m in ("teacher", "student_interleaved"):
        s = res.get(m) or {}
        d = res.get(f"{m}__test_clean") or {}
        model = s.get("model") or ""
        bidir = "BLSTM" in model
        rows.append([m, model.split(": ", 1)[-1] if model else "not run",
                     fmt(s.get("param_count"), ",d"), fmt(s.get("frames_per_s"), ",.0f"),
                     fmt(d.get("rtf_forward"), ".4f"),
                     "whole utterance (bidirectional)" if bidir else "streams (causal)" if model else MISSING])
    lines = ["## T5 Models", "",
             "Training frames/s (LFR frames, this machine, CPU) and the decoder's forward RTF on "
             "test_clean (one core). Paper: 5x832 BLSTM teacher, 5x768 LSTM student (paper profile: "
             "78.3M and 24.2M params).", ""]
    lines += md_table(["model", "architecture", "params", "train frames/s", "RTF forward", "latency"], rows)
    lines += ["", "Regenerate: `dvc repro decode@teacher decode_student@interleaved`", ""]
    return lines


def f1_unlabeled(res: Results) -> list[str]:
    """WERR against the amount of unlabeled data (the plot is written beside the tables)."""
    runs, pts = f1_runs(res), unlabeled_points(res)
    rows = [[f"{100 * f:g}%", fmt(h, ".2f")]
            + [werr_cell(res, "student_labeled_only", f"student_{v}", x) for x in TEST_SETS]
            for v, f, h in runs]
    lines = ["## F1 WERR vs amount of unlabeled data", "",
             "The interleaved student with a fraction of the machine-labeled set (hours of "
             "unlabeled audio), WERR over the labeled-only student. Paper: gains grow with the "
             "unlabeled:labeled ratio.", ""]
    lines += md_table(["unlabeled used", "hours", *(f"WERR {SHORT[x]}" for x in TEST_SETS)], rows) \
        if runs else ["not run"]
    wi = range(2, 2 + len(TEST_SETS))               # the WERRs of a point
    if len(pts) >= 2 and None not in [p[i] for p in pts for i in wi]:
        # gains grow: the most data beats the least on every set (one base, so the same as a
        # larger WERR over it); monotone at every step is shown on the point estimates
        grows, text = judge(res, f"student_{runs[0][0]}", f"student_{runs[-1][0]}")
        mono = all(b[i] >= a[i] for a, b in zip(pts, pts[1:]) for i in wi)
        lines += ["", f"- Gains grow with the unlabeled data (largest beats smallest amount on "
                      f"every test set): {verdict(grows)} (WERR: {text}); monotone at every step "
                      f"(point estimates): {'yes' if mono else 'no'}", "", INTERVALS + "."]
    lines += ["", "![F1](f1_unlabeled.png)" if len(pts) >= 2 else "",
              *on_request(res, ["unl12", "unl25", "unl50", "interleaved"]),
              "Regenerate: " + make_cmd(["unl12", "unl25", "unl50", "interleaved"]), ""]
    return lines


def f1_runs(res: Results) -> list[tuple[str, float, float | None]]:
    """(variant, fraction, hours) of every decoded F1 run, by fraction."""
    runs = []
    for v, frac in (("unl12", 0.125), ("unl25", 0.25), ("unl50", 0.5), ("interleaved", 1.0)):
        s = res.get(f"student_{v}")
        if s is None or res.wer(f"student_{v}", "test_clean") is None:
            continue
        frames = (s.get("machine") or {}).get("lfr_frames")
        runs.append((v, frac, None if frames is None else frames * 0.03 / 3600))
    return runs


def unlabeled_points(res: Results) -> list[tuple]:
    """(fraction, hours, WERR per test set...) for every decoded F1 run (point estimates)."""
    return [(frac, hours) + tuple(
        werr(res.wer_stats("student_labeled_only", x)[0], res.wer_stats(f"student_{v}", x)[0])
        for x in TEST_SETS) for v, frac, hours in f1_runs(res)]


def plot_f1(res: Results, path: str) -> bool:
    """The F1 plot; with fewer than 2 decoded runs it says so (the file always exists: a DVC out)."""
    pts = unlabeled_points(res)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if len(pts) < 2:
        ax.text(0.5, 0.5, "F1: fewer than 2 runs decoded\n(dvc repro decode_student@unl25 ...)",
                ha="center", va="center", transform=ax.transAxes)
    for i, name in enumerate(TEST_SETS):
        ax.plot([p[1] or p[0] for p in pts], [100 * (p[2 + i] or 0) for p in pts], "o-", label=name)
    ax.set_xlabel("unlabeled audio (hours)")
    ax.set_ylabel("WERR over labeled-only (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from millionhours.fileio import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return len(pts) >= 2


def gtc_points(res: Results, prefix: str = "gtc_g16") -> dict[str, list[tuple]]:
    """GTC runs at the paper's worker count by form (the momentum form with a refreshed second
    moment apart): [(bytes ratio to dense, WER clean, WER noisy, variant)], sorted by bytes;
    only decoded runs."""
    by: dict[str, list[tuple]] = {}
    for stem in sorted(res.runs):
        if not stem.startswith(f"student_{prefix}") or "__" in stem:
            continue
        d = res.runs[stem].get("distributed") or {}
        wers = [res.wer(stem, x) for x in ("test_clean", "test_noisy")]
        if d.get("ratio_to_dense") and None not in wers:
            form = d.get("form", "gradient") + (", v refreshed" if d.get("refresh_every") else "")
            by.setdefault(form, []).append(
                (d["ratio_to_dense"], *wers, stem[len("student_"):]))
    return {form: sorted(pts) for form, pts in by.items()}


def plot_gtc(res: Results, path: str, ref: str = "global16", sync: str = "sync_g16") -> bool:
    """T3's bytes-against-WER plot of the GTC forms at 16 workers, one panel per test set, the
    dense references as lines (the file always exists: a DVC out)."""
    pts = gtc_points(res)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for i, (ax, dset) in enumerate(zip(axes, ("test_clean", "test_noisy"))):
        for form, p in pts.items():
            ax.plot([100 * x[0] for x in p], [x[1 + i] for x in p], "o-", label=f"GTC {form}")
        for name, style in ((ref, ":"), (sync, "--")):
            w = res.wer(f"student_{name}", dset)
            if w is not None:
                ax.axhline(w, color="grey", ls=style, label=name)
        if not pts:
            ax.text(0.5, 0.5, "no GTC run at 16 workers decoded\n(T3: run on request)",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per worker and step (% of dense)")
        ax.set_ylabel(f"WER {dset} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from millionhours.fileio import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return bool(pts)


def convergence(res: Results) -> list[str]:
    """Every student's training: the same stopping rule for all, so the tables compare
    converged students (updates to stop, why it stopped, the best dev CE and when)."""
    rows = []
    for stem in sorted(res.runs):
        s = res.runs[stem]
        if not stem.startswith("student_") or "__" in stem or "history" not in s:
            continue
        rows.append([stem[len("student_"):], fmt(s.get("steps"), ",d"),
                     s.get("stopped") or "–", fmt(s.get("halvings"), "d"),
                     fmt(s.get("best_step"), ",d"), fmt(s.get("dev_ce"), ".4f"),
                     fmt(None if s.get("train_s") is None else s["train_s"] / 60, ".1f")])
    lines = ["## Training to convergence", "",
             "Every student stops by the same rule (params `student.train`): newbob halving of "
             "the LR on dev CE, validated every `eval_every` updates, until the LR has been "
             "halved `stop_halvings` times or dev CE has not improved for `patience` validations "
             "(`epochs` is only a cap: a run stopped by it is marked `epochs`). final.pt holds the "
             "best validation's weights; the dev CE curves are `results/student_<V>_curve.png`.", ""]
    if not rows:
        return lines + ["no student trained yet.", ""]
    return lines + md_table(["variant", "updates", "stopped by", "halvings", "best at update",
                             "best dev CE", "train min"], rows) + [""]


def run_cost(res: Results) -> list[str]:
    """What the run cost, stage by stage (results/timing.json from the recipe's log)."""
    t = res.get("timing")
    lines = ["## Run cost", ""]
    if not t or not t.get("stages"):
        return lines + ["not measured: `results/timing.json` is written by stage 8 from "
                        "`exp/timing.tsv`, which `recipes/run.sh` fills as stages finish.", ""]
    groups: dict = {}
    for name, secs in t["stages"].items():
        key = name.split("@")[0] + ("@*" if "@" in name else "")
        n, tot = groups.get(key, (0, 0.0))
        groups[key] = (n + 1, tot + secs)
    rows = [[k if n == 1 else f"{k} ({n} runs)", f"{tot / 60:.1f}",
             share(tot / t["total_s"] if t["total_s"] else None)]
            for k, (n, tot) in groups.items()]
    rows.append(["**total**", f"**{t['total_s'] / 60:.1f}**", "100%"])
    return lines + md_table(["stage", "minutes", "share"], rows) + [
        "", f"Sum of the stages' own wall times on {t.get('cores')} cores (code "
        f"{t.get('code_version')}; first start to last end: {t.get('wall_s', 0) / 60:.1f} min); "
        f"stage 8 itself is added to `timing.json` after this table is written.", ""]


TABLES = (t0_pipeline, t1_main, t2_schedules, t3_paper_scale, t3_distributed, t4_topk, t5_models,
          f1_unlabeled, convergence, run_cost)


def provenance(res: Results, shown: int = 4) -> str:
    """Which code version wrote which result files; a partial rerun leaves several, and rows
    of different versions (a teacher newer than its students, say) need that said."""
    by_version: dict = {}
    for stem, r in res.runs.items():
        by_version.setdefault(r.get("code_version") or "unknown", []).append(stem)
    if len(by_version) == 1:
        return f"Code version of the results: {next(iter(by_version))}."
    parts = []
    for version, stems in sorted(by_version.items(), key=lambda kv: -len(kv[1])):
        more = f" and {len(stems) - shown} more" if len(stems) > shown else ""
        names = ", ".join(stems[:shown]) + more
        parts.append(f"{version} ({len(stems)} files: {names})")
    return (f"**Results from a partial rerun, {len(by_version)} code versions**: rows of different "
            f"versions may not be comparable. " + "; ".join(parts) + ".")


def render(res: Results, header: str) -> str:
    lines = ["# Replication tables", "",
             "Generated by `python -m millionhours.bin.tables` from the JSON files in this folder; "
             "do not edit by hand. " + header, ""]
    for table in TABLES:
        lines += table(res)
    return "\n".join(lines).rstrip() + "\n"
