"""Frame-accuracy baselines for a network's dev frame accuracy (what "good" means for stage 4).

Usage: python -m millionhours.bin.frame_baselines [--params params.yaml] [--profile P]
           [--results results/frame_baselines.json] [--tree-dir DIR] MODEL GMM_DIR FEATS_DIR
           TARGETS_DIR

e.g.   python -m millionhours.bin.frame_baselines exp/teacher/final.pt exp/tri data/fbank/dev \
           exp/targets/dev

At the network's LFR frames (the 10 ms frame each LFR label is taken from), against the forced
alignment of TARGETS_DIR (targets.scp: senones; phone_targets.scp: phones), it scores:
  majority      the most frequent senone of the training counts, every frame (a floor);
  mono GMM      GMM_DIR/mono/final.mdl (the monophone GMM of stage 2): argmax over its pdfs of
                log-likelihood + log prior, mapped to the phone: the *monophone-level baseline*,
                scored on phone frame accuracy;
  tri GMM       GMM_DIR/final.mdl: the same on phones, and on senones when the targets come from
                its tree (the networks' own LFR tree, --tree-dir, has other senones: no row);
  MODEL         the network's argmax senone (senone accuracy) and its phone (phone accuracy).
The tri GMM's scores add the log prior of its senones' frame counts when its tree is the
targets' (a MAP frame classifier), else none; the mono GMM's have none. --tree-dir is the exp
dir of the targets' tree (default GMM_DIR; exp/tree_lfr for the networks). JSON to RESULTS.
"""
import os
import sys

import kaldiio
import numpy as np

from millionhours import alignments, config, features, kaldi_io
from millionhours.decode import GmmScorer, NnetScorer
from millionhours.fileio import write_json

PROG = "frame_baselines"


def pdf_to_phone(tm: kaldi_io.TransitionModel) -> np.ndarray:
    """Each pdf's phone (the most frequent phone among the transition-ids that emit it)."""
    pdf, phone = tm.tid2pdf()[1:], tm.tid2phone()[1:]
    out = np.zeros(tm.num_pdfs(), np.int64)
    for p in range(tm.num_pdfs()):
        vals, counts = np.unique(phone[pdf == p], return_counts=True)
        out[p] = vals[counts.argmax()] if len(vals) else 0
    return out


def lfr_rows(x: np.ndarray, stack: int, skip: int) -> np.ndarray:
    return x[features.lfr_frame_index(len(x), stack, skip)]


class Tally:
    def __init__(self):
        self.hit, self.n = {}, 0

    def add(self, name: str, hyp: np.ndarray, ref: np.ndarray) -> None:
        self.hit[name] = self.hit.get(name, 0) + int((hyp == ref).sum())

    def table(self) -> dict:
        return {k: round(v / max(self.n, 1), 4) for k, v in self.hit.items()}


def run(args) -> dict:
    params = config.load_params(args.params, args.profile)
    counts_path = os.path.join(os.path.dirname(args.model), "..", "targets", "train_labeled",
                               "senone_counts") if args.counts is None else args.counts
    counts = alignments.read_counts(counts_path)
    nnet = NnetScorer(args.model, counts_path, 0.0, frame_repeat=1)   # prior 0: log-posteriors
    tri_tm, tri_am = kaldi_io.read_model(os.path.join(args.gmm_dir, "final.mdl"))
    mono_tm, mono_am = kaldi_io.read_model(os.path.join(args.gmm_dir, "mono", "final.mdl"))
    tree_dir = args.tree_dir or args.gmm_dir
    tree_tm = tri_tm if tree_dir == args.gmm_dir else \
        kaldi_io.read_model(os.path.join(tree_dir, "final.mdl"))[0]
    if tree_tm.num_pdfs() != len(counts) or nnet.num_pdfs != len(counts):
        sys.exit(f"{PROG}: error: {counts_path} has {len(counts)} senones, {tree_dir}/final.mdl "
                 f"{tree_tm.num_pdfs()}, {args.model} {nnet.num_pdfs}; use the model, tree and "
                 f"targets of one build")
    same_tree = tree_dir == args.gmm_dir         # the tri GMM's pdfs are the targets' senones
    tri = GmmScorer(args.gmm_dir, params.get("gmm") or {}, tri_am)
    mono = GmmScorer(os.path.join(args.gmm_dir, "mono"), params.get("gmm") or {}, mono_am)
    tri_prior = alignments.log_priors(counts).astype(np.float32) if same_tree else 0.0
    tri_phone, mono_phone = pdf_to_phone(tri_tm), pdf_to_phone(mono_tm)
    tree_phone = pdf_to_phone(tree_tm)
    majority = int(np.argmax(counts))

    senones = kaldiio.load_scp(os.path.join(args.targets_dir, "targets.scp"))
    phones = kaldiio.load_scp(os.path.join(args.targets_dir, "phone_targets.scp"))
    feats = kaldiio.load_scp(os.path.join(args.feats_dir, "feats.scp"))
    utt2spk = dict(ln.split() for ln in open(os.path.join(args.feats_dir, "utt2spk")))
    utts = [u for u in feats if u in senones and u in phones]
    if not utts:
        sys.exit(f"{PROG}: error: no utterance of {args.feats_dir}/feats.scp has targets in "
                 f"{args.targets_dir}; pass the targets made from these features")
    sen_t, ph_t = Tally(), Tally()
    for i in range(0, len(utts), 64):
        part = utts[i:i + 64]
        fb = {u: np.asarray(feats[u], np.float32) for u in part}
        post = nnet.loglikes(fb)                        # (T10 rounded to LFR, S) log-posteriors
        tri_x = tri.features(fb, utt2spk)
        # mono and tri share their front end unless a transform (LDA+MLLT) sets them apart
        same = mono.mat is None and tri.mat is None and mono.cfg == tri.cfg
        mono_x = tri_x if same else mono.features(fb, utt2spk)
        tri_ll = {u: tri.pdf_loglikes(x) for u, x in tri_x.items()}
        mono_ll = {u: mono.pdf_loglikes(x) for u, x in mono_x.items()}
        for u in part:
            ref_s = np.asarray(senones[u], np.int64)
            ref_p = np.asarray(phones[u], np.int64)
            n = len(ref_s)
            net = post[u][:n].argmax(1)                 # frame_repeat 1: row t = LFR frame t
            tri_best = lfr_rows(tri_ll[u] + tri_prior, nnet.stack, nnet.skip)[:n].argmax(1)
            mono_best = lfr_rows(mono_ll[u], nnet.stack, nnet.skip)[:n].argmax(1)
            sen_t.n += n
            ph_t.n += n
            sen_t.add("majority", np.full(n, majority), ref_s)
            if same_tree:
                sen_t.add("tri_gmm", tri_best, ref_s)
            sen_t.add("model", net, ref_s)
            ph_t.add("majority", np.full(n, tree_phone[majority]), ref_p)
            ph_t.add("mono_gmm", mono_phone[mono_best], ref_p)
            ph_t.add("tri_gmm", tri_phone[tri_best], ref_p)
            ph_t.add("model", tree_phone[net], ref_p)
    out = {"model": args.model, "gmm_dir": args.gmm_dir, "tree_dir": tree_dir,
           "feats_dir": args.feats_dir,
           "targets_dir": args.targets_dir, "utterances": len(utts), "lfr_frames": sen_t.n,
           "senone_frame_acc": sen_t.table(), "phone_frame_acc": ph_t.table(),
           "baseline": "mono_gmm phone frame accuracy (monophone GMM of stage 2, argmax pdf)",
           "params": {"profile": params.get("profile"), "gmm": {"feats": params["gmm"]["feats"]}},
           "code_version": config.code_version()}
    if args.results:
        write_json(args.results, out)
    return out


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--results", default="results/frame_baselines.json", help="output JSON ('' = none)")
    ap.add_argument("--counts", default=None,
                    help="senone_counts of the training targets (default: "
                         "MODEL_DIR/../targets/train_labeled/senone_counts)")
    ap.add_argument("--tree-dir", default=None,
                    help="exp dir of the targets' tree (default GMM_DIR; e.g. exp/tree_lfr)")
    ap.add_argument("model", help="network final.pt (stage 4)")
    ap.add_argument("gmm_dir", help="GMM exp dir with final.mdl and mono/final.mdl (stage 2)")
    ap.add_argument("feats_dir", help="feature data dir of the scored set (e.g. data/fbank/dev)")
    ap.add_argument("targets_dir", help="stage-3 targets of that set (targets.scp, phone_targets.scp)")
    args = ap.parse_args(argv)
    for path in (args.model, os.path.join(args.gmm_dir, "final.mdl"),
                 os.path.join(args.gmm_dir, "mono", "final.mdl"),
                 os.path.join(args.feats_dir, "feats.scp"), os.path.join(args.targets_dir, "targets.scp")):
        if not os.path.exists(path):
            sys.exit(f"{PROG}: error: {path}: missing; run stages 2-4 first")
    out = run(args)
    s, p = out["senone_frame_acc"], out["phone_frame_acc"]
    print(f"{PROG}: {out['lfr_frames']} LFR frames of {args.feats_dir}: senone acc: model "
          f"{100 * s['model']:.1f}%, tri GMM "
          f"{'-' if 'tri_gmm' not in s else format(100 * s['tri_gmm'], '.1f')}%, majority "
          f"{100 * s['majority']:.1f}%; phone acc: model {100 * p['model']:.1f}%, mono GMM "
          f"{100 * p['mono_gmm']:.1f}% (baseline), tri GMM {100 * p['tri_gmm']:.1f}%")


if __name__ == "__main__":
    main()
