"""Compatibility with the seed's command lines: its long flag names (``--stats_mode``,
``--per_channel_quant_act``, ...) are translated to this CLI's, and its flags that have no meaning
in this design are accepted by the parser only to be refused with the reason and what to use
instead (exit 2, one line), never silently ignored."""
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


SEED_RENAMED = {
    "--per_channel_quant_weights": "--per-channel-weights",
    "--per_channel_quant_act": "--per-channel-activations",
}


def translate_seed_long_names(argv: list[str], known: set[str]) -> list[str]:
    """``--seed_style_name[=value]`` -> this CLI's ``--seed-style-name`` where that is a known option
    (or the explicit renames above); every other token is left as it is."""
    translated = []
    for token in argv:
        name, separator, value = token.partition("=")
        if name.startswith("--") and name not in known:
            candidate = SEED_RENAMED.get(name, name.replace("_", "-"))
            if candidate in known:
                token = candidate + separator + value
        translated.append(token)
    return translated


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
