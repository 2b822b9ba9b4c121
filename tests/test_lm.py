"""The Kneser-Ney LM (kaldingram), its perplexity/OOV accounting and G.fst (kaldilm)."""
import math

import pytest

from millionhours import lm

TEXT = ["the cat sat", "the dog sat", "a cat ran", "the cat ran", "a dog sat down"]


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    counts = lm.train_arpa(TEXT, str(path), order=3)
    return path, counts


def test_counts_and_normalization(arpa):
    path, counts = arpa
    assert counts[1] == 7 + 2            # 7 words + <s> + </s>
    assert set(counts) == {1, 2, 3}
    model = lm.load_arpa(str(path))
    # every history's conditional distribution sums to one (back-off included)
    vocab = [w for w in model.vocabulary() if w != "<s>"]
    for hist in [(), ("the",), ("<s>", "the"), ("cat", "sat"), ("dog",)]:
        total = sum(10 ** lm._log10_p(model, hist + (w,)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), hist


def test_perplexity_counts_oovs_like_srilm(arpa):
    model = lm.load_arpa(str(arpa[0]))
    r = lm.perplexity(model, ["the cat sat", "the zebra sat"])
    assert r["oov"] == 1 and r["words"] == 6
    assert r["oov_rate"] == pytest.approx(1 / 6, abs=1e-6)
    # by hand: p(the|<s>) p(cat|<s> the) p(sat|the cat) p(</s>|cat sat) + the second sentence
    # with the history restarting after the OOV
    lp = lambda *ng: lm._log10_p(model, ng)   # noqa: E731
    expect = (lp("<s>", "the") + lp("<s>", "the", "cat") + lp("the", "cat", "sat") +
              lp("cat", "sat", "</s>") + lp("<s>", "the") + lp("sat") + lp("sat", "</s>"))
    assert r["logprob10"] == pytest.approx(expect, abs=1e-3)
    assert r["ppl"] == pytest.approx(10 ** (-expect / (5 + 2)), rel=1e-3)


def test_map_oov_and_empty_text(tmp_path):
    out, n = lm.map_oov(["a b c", "b d"], {"a", "b"}, "<unk>")
    assert out == ["a b <unk>", "b <unk>"] and n == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(lm.LMError, match="LM text is empty"):
        lm.read_sentences(str(empty))
    with pytest.raises(lm.LMError, match="not found"):
        lm.read_sentences(str(tmp_path / "missing.txt"))


def test_g_fst_uses_words_txt_ids(arpa, tmp_path):
    from millionhours.toolchain import kaldifst
    words = ["<eps>", "a", "cat", "dog", "down", "ran", "sat", "the", "#0", "<s>", "</s>"]
    wt = tmp_path / "words.txt"
    wt.write_text("".join(f"{w} {i}\n" for i, w in enumerate(words)))
    g = tmp_path / "G.fst"
    lm.arpa_to_fst(str(arpa[0]), str(wt), str(g))
    fst = kaldifst.StdVectorFst.read(str(g))
    labels = {(a.ilabel, a.olabel) for s in range(fst.num_states)
              for a in kaldifst.ArcIterator(fst, s)}
    assert (8, 0) in labels                           # #0 on the back-off arcs
    assert {i for i, o in labels if i == o and i} == set(range(1, 8))   # every word, own id
    # the best path's cost is the LM's: -ln p(the cat sat </s>) for the sentence acceptor
    model = lm.load_arpa(str(arpa[0]))
    r = lm.perplexity(model, ["the cat sat"])
    acc = kaldifst.compile("0 1 7 7\n1 2 2 2\n2 3 6 6\n3\n")
    kaldifst.arcsort(fst, sort_type="ilabel")
    comp = kaldifst.compose(acc, fst)
    best = kaldifst.shortest_path(comp)
    ok, _, _, w = kaldifst.get_linear_symbol_sequence(best)
    assert ok and float(w.value) == pytest.approx(-r["logprob10"] * math.log(10), abs=1e-3)
