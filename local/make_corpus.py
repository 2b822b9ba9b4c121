"""Stage 0: synthesize the default multi-speaker corpus as Kaldi data dirs.

Usage: python -m local.make_corpus [--params params.yaml] [--profile P] --out data/corpus

Text: WordNet examples + fortunes, strictly normalized, every word in the CMU dictionary
(local/corpus/text.py). Speech: flite and festival voices turned into pseudo-speakers by formant
warp + F0 + rate (local/corpus/tts.py), with the synthesizer's exact phone timings. Noise:
simulated rooms and white/pink/brown/babble noise at 0-20 dB SNR (local/corpus/degrade.py).

Writes OUT/{train_labeled,train_unlabeled,dev,test_clean,test_noisy,test_unseen_voice}/
(wav.scp, text, utt2spk, spk2utt, utt2dur, spk2gender, spk2info, utt2corruption, phones.ctm), OUT/train_labeled_clean/
(train_labeled's utterances before corruption: the GMM aligns these, as Kaldi's reverberation
recipes align clean speech and reuse the alignments for the corrupted copies), OUT/wav/, OUT/local/
(lexicon.txt, lm_text.txt) and OUT/summary.json. The sets are disjoint by sentence and by speaker
(the two train sets share the training speakers); test_noisy holds test_clean's utterances
corrupted; test_unseen_voice (clean) is spoken only by the base voices of corpus.test_only_voices,
which no other set, speaker or babble talker uses (transfer to a voice never heard in training).
The unlabeled set's transcripts and phone timings go to OUT/oracle/train_unlabeled/, read only by
code named oracle/analysis. The build happens in OUT.partial/ (finished chunks are
kept when interrupted) and is renamed to OUT when complete.
"""
import argparse
import math
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile
from tqdm import tqdm

from local.corpus import degrade, text, tts
from millionhours import config, datadir
from millionhours.fileio import atomic_open, atomic_path, read_json, write_json

SR = 16000
# test_noisy mirrors test_clean; test_unseen_voice is spoken by corpus.test_only_voices alone
SETS = ("train_labeled", "train_unlabeled", "dev", "test_clean", "test_unseen_voice")
SET_CODE = {"train_labeled": "l", "train_unlabeled": "u", "dev": "d", "test_clean": "t",
            "test_unseen_voice": "v"}
SPK_POOL = {"train_labeled": "train", "train_unlabeled": "train", "dev": "dev", "test_clean": "test",
            "test_unseen_voice": "unseen"}
HELD_OUT = ("test_clean", "test_unseen_voice", "dev")   # sentence pools kept out of the LM text
BATCH = 24              # utterances per synthesis job (one festival process per job)
BABBLE_SENTENCES = 3    # sentences concatenated into one babble talker


@dataclass
class Item:
    """One planned utterance: everything needed to make it, fixed before synthesis."""
    set: str
    index: int
    utt: str
    speaker: tts.Speaker
    tts_text: str
    transcript: str
    f0: float
    rate: float


# ---------------------------------------------------------------- planning (deterministic)

def est_seconds(transcript: str) -> float:
    """Rough duration of a synthesized sentence; only sizes the sentence pools and chunks."""
    return 0.6 + 0.33 * len(transcript.split())


def split_pools(pairs, hours: dict, babble_needed: int) -> dict:
    """Disjoint sentence pools: each evaluation/labeled set gets ~1.5x its estimated need."""
    pools, pos = {}, 0
    for name in HELD_OUT + ("train_labeled",):
        need, got, start = hours[name] * 3600 * 1.5, 0.0, pos
        while got < need and pos < len(pairs):
            got += est_seconds(pairs[pos][1])
            pos += 1
        pools[name] = pairs[start:pos]
    pools["babble"] = pairs[pos:pos + babble_needed]
    pools["train_unlabeled"] = pairs[pos + babble_needed:]
    if any(len(p) == 0 for p in pools.values()):
        raise SystemExit("make_corpus: not enough sentences for the requested hours; lower corpus.hours")
    return pools


def draw_speaker_pools(cp: dict, rng) -> dict:
    """Disjoint speaker pools. The test-only voices speak test_unseen_voice alone: no training
    set, no dev or test_clean speaker and no babble talker uses them."""
    unseen = list(cp["test_only_voices"])
    if not unseen or any(v not in cp["voices"] for v in unseen):
        raise SystemExit(f"make_corpus: corpus.test_only_voices {unseen}: name one or more of "
                         f"corpus.voices for test_unseen_voice")
    seen = [v for v in cp["voices"] if v not in unseen]
    if not seen:
        raise SystemExit("make_corpus: corpus.test_only_voices holds every voice; keep one for training")
    n, fs = cp["speakers"], cp["female_share"]
    nb = cp["babble_talkers"]["train"] + cp["babble_talkers"]["test"]
    return {
        "train": tts.draw_speakers("tr", n["train"], rng, seen, fs),
        "dev": tts.draw_speakers("dv", n["dev"], rng, seen, fs),
        "test": tts.draw_speakers("ts", n["test"], rng, seen, fs),
        "babble": tts.draw_speakers("bb", nb, rng, seen, fs),
        "unseen": tts.draw_speakers("un", n["test"], rng, unseen, fs),
    }


def plan_item(set_name: str, k: int, pool, speakers, cp: dict, seed: int) -> Item:
    """The k-th utterance of a set: sentence k of its pool (cycled), a random speaker, jitter."""
    rng = np.random.default_rng([seed, 1, SETS.index(set_name), k])
    spk = speakers[rng.integers(len(speakers))]
    tts_text, transcript = pool[k % len(pool)]
    jf, jr = cp["jitter"]["f0"], cp["jitter"]["rate"]
    return Item(set_name, k, f"{spk.id}-{SET_CODE[set_name]}{k:06d}", spk, tts_text, transcript,
                f0=spk.f0 * (1 + rng.uniform(-jf, jf)), rate=spk.rate * (1 + rng.uniform(-jr, jr)))


# ---------------------------------------------------------------- synthesis (workers)

_SHARED: dict = {}      # RIR banks and babble talkers, inherited by forked workers


def _synth_job(job):
    """Worker: synthesize one batch of items of one voice, post-process, write wavs."""
    items, wav_dir, cp, seed = job
    with tempfile.TemporaryDirectory() as tmp:
        utts = [tts.Utt(it.tts_text, it.speaker.alpha, it.f0, it.rate) for it in items]
        outs = tts.synthesize(items[0].speaker.voice, utts, tmp)
    return [_finish_utterance(it, audio, phones, wav_dir, cp, seed) for it, (audio, phones) in zip(items, outs)]


def _finish_utterance(it: Item, audio, phones, wav_dir, cp, seed) -> dict:
    rng = np.random.default_rng([seed, 2, SETS.index(it.set), it.index])
    audio, phones = pad_silence(audio, phones, rng, cp["silence_pad_s"])
    audio = audio * (10 ** (rng.uniform(*cp["peak_dbfs"]) / 20) / max(np.abs(audio).max(), 1e-9))
    audio = degrade.add_noise_floor(audio, rng, tuple(cp["noise_floor_snr_db"]))
    meta = {"utt": it.utt, "set": it.set, "spk": it.speaker.id, "text": it.transcript,
            "dur": len(audio) / SR, "phones": phones, "corruption": None}
    if it.set.startswith("train") and rng.random() < cp["train_corrupt_share"]:
        if it.set == "train_labeled":    # the clean copy, for GMM alignment (as Kaldi's rvb recipes)
            meta["clean_wav"] = write_wav(wav_dir, os.path.join("train_labeled_clean", it.utt + ".wav"), audio)
        audio, meta["corruption"] = _corrupt(audio, rng, cp, "train")
    meta["wav"] = write_wav(wav_dir, os.path.join(it.set, it.utt + ".wav"), audio)
    if it.set == "test_clean":      # the paired noisy copy: same utterance, test rooms and noise
        noisy, meta["noisy_corruption"] = _corrupt(audio, rng, cp, "test")
        meta["noisy_wav"] = write_wav(wav_dir, os.path.join("test_noisy", it.utt + ".wav"), noisy)
    return meta


def _corrupt(audio, rng, cp, which: str):
    c = cp["corrupt"]
    return degrade.corrupt(audio, rng, _SHARED[f"rirs_{which}"], _SHARED[f"babble_{which}"],
                           snr_db=tuple(c["snr_db"]), reverb_prob=c["reverb_prob"],
                           noise_types=tuple(c["noise_types"]))


def pad_silence(audio, phones, rng, pad_range):
    """Adds random leading/trailing silence and shifts the phone timings to match."""
    lead, trail = (int(rng.uniform(*pad_range) * SR) for _ in range(2))
    out = np.concatenate([np.zeros(lead, np.float32), audio.astype(np.float32), np.zeros(trail, np.float32)])
    shift, end = lead / SR, len(out) / SR
    segs = [[s + shift, e + shift, p] for s, e, p in phones]
    if segs[0][2] == "sil":
        segs[0][0] = 0.0
    else:
        segs.insert(0, [0.0, shift, "sil"])
    if segs[-1][2] == "sil":
        segs[-1][1] = end
    else:
        segs.append([segs[-1][1], end, "sil"])
    return out, [tuple(s) for s in segs]


def write_wav(wav_dir: str, rel: str, audio) -> str:
    """16-bit PCM WAV at wav_dir/rel, atomically; returns rel (the build dir moves when done)."""
    path = os.path.join(wav_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        soundfile.write(tmp, np.clip(audio, -1, 1), SR, subtype="PCM_16", format="WAV")
    return rel


def run_jobs(items: list[Item], wav_dir, cp, seed, pool, desc: str) -> list[dict]:
    """Synthesizes items in voice-homogeneous batches; results come back in plan order."""
    by_voice: dict[str, list[Item]] = {}
    for it in items:
        by_voice.setdefault(it.speaker.voice, []).append(it)
    jobs = [(batch[i:i + BATCH], wav_dir, cp, seed)
            for batch in by_voice.values() for i in range(0, len(batch), BATCH)]
    metas = {}
    with tqdm(total=len(items), desc=desc, unit="utt", disable=not sys.stderr.isatty()) as bar:
        for res in pool.imap_unordered(_synth_job, jobs):
            metas.update((m["utt"], m) for m in res)
            bar.update(len(res))
    return [metas[it.utt] for it in items]


def build_set(set_name: str, pools, speakers, cp, seed, pool, work: str) -> list[dict]:
    """Utterances of one set, in plan order, until the target hours are reached.

    Chunks are planned from the remaining need, synthesized in parallel and accepted in plan
    order, so the result does not depend on worker timing; finished chunks are cached.
    """
    target = cp["hours"][set_name] * 3600
    sent_pool, spks = pools[set_name], speakers[SPK_POOL[set_name]]
    accepted, total, k, chunk_no = [], 0.0, 0, 0
    while total < target:
        mean = np.mean([est_seconds(t) + 0.5 for _, t in sent_pool[:200]])
        n = max(8, math.ceil((target - total) / mean * 1.05))
        if set_name != "train_unlabeled":
            n = min(n, len(sent_pool) - k)
            if n <= 0:
                raise SystemExit(f"make_corpus: {set_name}: sentence pool exhausted at {total / 3600:.2f} h; "
                                 f"lower corpus.hours.{set_name}")
        items = [plan_item(set_name, k + i, sent_pool, spks, cp, seed) for i in range(n)]
        metas = _cached(os.path.join(work, "cache", f"{set_name}.{chunk_no}.pkl"),
                        lambda: run_jobs(items, os.path.join(work, "wav"), cp, seed, pool,
                                         f"{set_name} chunk {chunk_no}"))
        for m in metas:
            if total >= target:
                break
            accepted.append(m)
            total += m["dur"]
        k, chunk_no = k + n, chunk_no + 1
    return accepted


def _cached(path: str, compute):
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    value = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "wb") as f:
        pickle.dump(value, f)
    return value


def make_babble_talkers(pools, speakers, cp, seed, pool) -> None:
    """Held-out talkers (own speakers and sentences) whose speech becomes babble noise."""
    sentences, n_train = pools["babble"], cp["babble_talkers"]["train"]
    with tempfile.TemporaryDirectory() as tmp:
        talkers = []
        for i, spk in enumerate(speakers["babble"]):
            utts = [tts.Utt(sentences[(i * BABBLE_SENTENCES + j) % len(sentences)][0], spk.alpha, spk.f0, spk.rate)
                    for j in range(BABBLE_SENTENCES)]
            talkers.append(pool.apply_async(tts.synthesize, (spk.voice, utts, tmp)))
        audio = [np.concatenate([a for a, _ in t.get()]) for t in talkers]
    _SHARED["babble_train"], _SHARED["babble_test"] = audio[:n_train], audio[n_train:]


# ---------------------------------------------------------------- writing the data dirs

def write_set(out: str, final: str, name: str, metas: list[dict], speakers: dict,
              oracle: bool = False, variant: str = "") -> None:
    """One Kaldi data dir in `out`, its wav.scp pointing to `final`/wav (where the build ends up);
    unlabeled transcripts and timings go to oracle/ instead. variant "noisy" takes test_clean's
    corrupted copies, "clean" train_labeled's uncorrupted audio."""
    d = os.path.join(out, name)
    wav_key, corr_key = {"": ("wav", "corruption"), "noisy": ("noisy_wav", "noisy_corruption"),
                         "clean": ("clean_wav", "clean_corruption")}[variant]
    spk_ids = sorted({m["spk"] for m in metas})
    extra = {
        "spk2gender": {s: speakers[s].sex for s in spk_ids},
        "spk2info": {s: f"voice={speakers[s].voice} alpha={speakers[s].alpha:.3f} f0={speakers[s].f0:.3f} "
                        f"rate={speakers[s].rate:.3f}" for s in spk_ids},
        "utt2corruption": {m["utt"]: _corruption_str(m.get(corr_key)) for m in metas},
    }
    text_table = {m["utt"]: m["text"] for m in metas}
    datadir.write_datadir(d, {m["utt"]: m["spk"] for m in metas},
                          {m["utt"]: os.path.join(final, "wav", m.get(wav_key, m["wav"])) for m in metas},
                          text=None if oracle else text_table,
                          utt2dur={m["utt"]: m["dur"] for m in metas}, extra=extra)
    ctm_dir = os.path.join(out, "oracle", name) if oracle else d
    if oracle:
        os.makedirs(ctm_dir, exist_ok=True)
        datadir.write_table(os.path.join(ctm_dir, "text"), text_table)
    write_ctm(os.path.join(ctm_dir, "phones.ctm"), metas)


def _corruption_str(info) -> str:
    if not info:
        return "clean"
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(info.items()) if v is not None)


def write_ctm(path: str, metas: list[dict]) -> None:
    """Kaldi CTM of the synthesizer's phone timings: `utt 1 start dur phone`."""
    with atomic_open(path) as f:
        for m in sorted(metas, key=lambda m: m["utt"].encode()):
            for s, e, p in m["phones"]:
                f.write(f"{m['utt']} 1 {s:.3f} {e - s:.3f} {p}\n")


def write_text_resources(out: str, pairs, pools) -> dict:
    """Lexicon of every pool word and the LM text (every sentence not in dev/test)."""
    local = os.path.join(out, "local")
    os.makedirs(local, exist_ok=True)
    held_out = {t for name in HELD_OUT for _, t in pools[name]}
    lm_sentences = [t for _, t in pairs if t not in held_out]
    with atomic_open(os.path.join(local, "lm_text.txt")) as f:
        f.writelines(s + "\n" for s in lm_sentences)
    words = sorted({w for _, t in pairs for w in t.split()})
    text.write_lexicon(words, text.load_cmudict(), os.path.join(local, "lexicon.txt"))
    return {"lm_sentences": len(lm_sentences), "lexicon_words": len(words),
            "lm_vocab": {w for s in lm_sentences for w in s.split()}}


def set_summary(metas: list[dict], speakers: dict, corr_key: str = "corruption") -> dict:
    spks = {m["spk"] for m in metas}
    return {"utterances": len(metas), "hours": round(sum(m["dur"] for m in metas) / 3600, 4),
            "speakers": len(spks), "voices": sorted({speakers[s].voice for s in spks}),
            "female_speakers": sum(speakers[s].sex == "f" for s in spks),
            "corrupted_share": round(float(np.mean([bool(m.get(corr_key)) for m in metas])), 3)}


def oov_rate(metas: list[dict], vocab: set) -> float:
    words = [w for m in metas for w in m["text"].split()]
    return round(sum(w not in vocab for w in words) / max(len(words), 1), 4)


# ---------------------------------------------------------------- main

def make_corpus(params: dict, out: str) -> dict:
    cp, seed = params["corpus"], params["seed"]
    missing = tts.check_engines()
    if missing:
        raise SystemExit(f"make_corpus: missing TTS engines/voices: {', '.join(missing)}; run bash recipes/setup.sh")
    phash = config.params_hash({"corpus": cp, "seed": seed, "code": code_hash()})
    if _is_complete(out, phash):
        print(f"make_corpus: {out} is complete for these params; delete it to rebuild")
        return read_json(os.path.join(out, "summary.json"))
    work = out + ".partial"
    _reset_partial(work, phash)

    rng = np.random.default_rng([seed, 0])
    pairs = text.build_sentence_pool(cp["words"]["min"], cp["words"]["max"])
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    n_babble = (cp["babble_talkers"]["train"] + cp["babble_talkers"]["test"]) * BABBLE_SENTENCES
    pools = split_pools(pairs, cp["hours"], n_babble)
    speakers = draw_speaker_pools(cp, rng)
    _SHARED["rirs_train"] = degrade.make_rir_bank(cp["rirs"]["train"], seed + 1000)
    _SHARED["rirs_test"] = degrade.make_rir_bank(cp["rirs"]["test"], seed + 2000)

    nj = config.num_jobs(cp["nj"])
    with mp.get_context("fork").Pool(nj) as pool:
        make_babble_talkers(pools, speakers, cp, seed, pool)
    with mp.get_context("fork").Pool(nj) as pool:       # forked after _SHARED is complete
        metas = {s: build_set(s, pools, speakers, cp, seed, pool, work) for s in SETS}

    all_spk = {s.id: s for group in speakers.values() for s in group}
    for s in SETS:
        write_set(work, out, s, metas[s], all_spk, oracle=(s == "train_unlabeled"))
    write_set(work, out, "test_noisy", metas["test_clean"], all_spk, variant="noisy")
    write_set(work, out, "train_labeled_clean", metas["train_labeled"], all_spk, variant="clean")
    res = write_text_resources(work, pairs, pools)
    summary = {s: set_summary(metas[s], all_spk) for s in SETS}
    summary["test_noisy"] = set_summary(metas["test_clean"], all_spk, "noisy_corruption")
    for s in HELD_OUT:
        summary[s]["oov_rate_vs_lm_text"] = oov_rate(metas[s], res["lm_vocab"])
    summary["test_noisy"]["oov_rate_vs_lm_text"] = summary["test_clean"]["oov_rate_vs_lm_text"]
    summary["train_labeled_clean"] = set_summary(metas["train_labeled"], all_spk, "clean_corruption")
    summary["text"] = {"sentence_pool": len(pairs), "lm_sentences": res["lm_sentences"],
                       "lexicon_words": res["lexicon_words"], "lm_vocab": len(res["lm_vocab"])}
    summary["params_hash"], summary["code_version"] = phash, config.code_version()
    summary["params"] = {"corpus": cp, "seed": seed, "profile": params["profile"]}
    shutil.rmtree(os.path.join(work, "cache"))
    write_json(os.path.join(work, "summary.json"), summary)
    _relocate(work, out)
    return summary


def code_hash() -> str:
    """Hash of the corpus code: a finished or partial build is reused only if made by this code."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(here, "make_corpus.py")] + sorted(
        os.path.join(here, "corpus", f) for f in os.listdir(os.path.join(here, "corpus")) if f.endswith(".py"))
    return config.params_hash({os.path.basename(f): open(f).read() for f in files})


def _is_complete(out: str, phash: str) -> bool:
    path = os.path.join(out, "summary.json")
    return os.path.isfile(path) and read_json(path).get("params_hash") == phash


def _reset_partial(work: str, phash: str) -> None:
    """Keeps an interrupted build only if it was made with the same params."""
    stamp = os.path.join(work, "params_hash")
    if os.path.isfile(stamp) and open(stamp).read().strip() == phash:
        print(f"make_corpus: resuming {work}", file=sys.stderr)
        return
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    with atomic_open(stamp) as f:
        f.write(phash + "\n")


def _relocate(work: str, out: str) -> None:
    """Publishes the finished build as OUT (the only step that touches OUT)."""
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(work, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    config.add_common_args(ap)
    ap.add_argument("--out", default="data/corpus", help="output directory (default data/corpus)")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    summary = make_corpus(params, args.out)
    if summary:
        for s in SETS + ("test_noisy", "train_labeled_clean"):
            v = summary[s]
            print(f"make_corpus: {s:19s} {v['hours']:7.3f} h {v['utterances']:6d} utts "
                  f"{v['speakers']:4d} speakers {len(v['voices'])} voices")


if __name__ == "__main__":
    main()
