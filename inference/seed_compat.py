"""Seed flags that have no meaning in this design: accepted by the parser only to be refused with
the reason and what to use instead (exit 2, one line), never silently ignored."""
from __future__ import annotations

import argparse

REJECTED_SEED_FLAGS = {
    ("-qm", "--qmodel"): "loading a saved quantized model is not supported: weights are quantized from the float "
                         "model in every run; pass a float state dict with --weights",
    ("-nb", "--no_bias_corr"): "belongs to the seed's saved quantized models (-qm), which do not exist here; "
                               "weight bias correction is chosen with -bcw",
    ("-ra", "--rho_act"): "rho was an experimental clipping parameter of the seed; choose an activation clipping "
                          "method with -c (laplace, gaus, mse, pct, kld, mix, 2std, ...)",
    ("-rw", "--rho_weight"): "rho was an experimental clipping parameter of the seed; choose a weight clipping "
                             "method with --weight-clipping",
    ("-ct", "--custom_test"): "the seed's custom test hook has no meaning here; run the test suite with "
                              "'python -m pytest'",
}


class RejectFlag(argparse.Action):
    """Refuse the flag at parse time with its explanation."""

    def __init__(self, option_strings, dest, explanation: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, **kwargs)
        self.explanation = explanation

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.explanation}")


def add_rejected_seed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("seed flags without a meaning here (refused with the reason)")
    for names, explanation in REJECTED_SEED_FLAGS.items():
        group.add_argument(*names, action=RejectFlag, explanation=explanation, help=argparse.SUPPRESS)
