"""The one place that imports the Kaldi-compatible native packages, in the only safe order.

kaldi-hmm-gmm 1.1.4, kaldifst 1.7.17 and kaldi-decoder 0.2.11 bundle OpenFst 1.6.5; kaldilm (and
pynini) bundle OpenFst 1.8. Importing the 1.8 group first deadlocks silently in a static
initializer, so every module of this project gets these packages from here:

    from millionhours.toolchain import khg, kaldifst, kaldi_decoder
    kaldilm = toolchain.kaldilm()      # imported lazily, always after the 1.6.5 group
"""
import kaldi_hmm_gmm as khg            # OpenFst 1.6.5 group first ...
import _kaldi_hmm_gmm as _khg          # bound functions not re-exported by kaldi_hmm_gmm
import kaldifst
import kaldi_decoder

__all__ = ["khg", "_khg", "kaldifst", "kaldi_decoder", "kaldilm"]


def kaldilm():
    """kaldilm (OpenFst 1.8), imported only after the 1.6.5 group above."""
    import kaldilm as _kaldilm       # ... the 1.8 group last
    return _kaldilm
