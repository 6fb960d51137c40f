"""What a finished run shows: the one-row results table, the printed summary, and the mlflow run
with its parameters, metrics, artifacts and QAT loss curve."""
from __future__ import annotations

from contextlib import contextmanager


def flatten_quantization(quantization) -> dict:
    from inference.tracking import flatten

    return flatten("quantization", quantization if isinstance(quantization, dict) else {"recipe": quantization}, {})


def results_table(results: dict) -> "pd.DataFrame":  # noqa: F821
    """The final one-row table of a run (printed by main)."""
    import pandas as pd

    recipe = results["quantization"]
    if isinstance(recipe, dict):
        parts = [f"{kind[0].upper()}{recipe[kind]['bits']}" for kind in ("weights", "activations") if recipe.get(kind)]
        recipe = "".join(parts) or "fp32"
    row = {"arch": results["arch"], "recipe": recipe, "images": results["images"], "top1": results["top1"],
           "top5": results["top5"], "loss": results["loss"]}
    if "fp32_top1" in results:
        row.update(fp32_top1=results["fp32_top1"], drop=results["drop"], agreement=results["top1_agreement"],
                   kl=results["mean_kl"])
    row.update(backend=results["backend"], processes=results["processes"], seconds=results["eval_seconds"])
    return pd.DataFrame([row])


def print_results(results: dict, table) -> None:
    if "top1" not in results:
        print(f"{results['arch']}: precision sweep on {results['images']} images, written to {results['sweep_csv']}")
        print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
        return
    print(f"{results['arch']}: {results['images']} images, weights {results['weights']}, device {results['device']}")
    if "statistics" in results:
        print(f"activation statistics: {results['statistics']}; backend: {results['backend']}")
    for kind in ("act", "weight"):
        if f"avg.entropy.{kind}" in results:
            print(f"Average bit rate: avg.entropy.{kind} - {results[f'avg.entropy.{kind}']:.4f} "
                  f"(Huffman {results[f'avg.huffman.{kind}']:.4f})")
    if results.get("calibration"):
        print(f"calibration: {results['calibration_images']} images from {results['calibration']}"
              + (" (overlapping the evaluated images)" if results["calibration_overlaps_eval"] else ""))
    if "fp32_top1" in results:
        print(f"FP32 on the same images: Prec@1 {results['fp32_top1']:.3f} Prec@5 {results['fp32_top5']:.3f} "
              f"(drop {results['drop']:.3f}); top-1 agreement with FP32 {results['top1_agreement']:.3f} %, "
              f"mean KL(FP32 || quantized) {results['mean_kl']:.5f} nats")
    if "onnx_file" in results:
        print(f"ONNX QDQ model: {results['onnx_file']} ({results['onnx_quantized_tensors']} quantized tensors; "
              f"encodings {results['onnx_encodings']})")
    if "onnx_top1" in results:
        print(f"onnxruntime on the same images: Prec@1 {results['onnx_top1']:.3f} Prec@5 {results['onnx_top5']:.3f} "
              f"(simulator {results['onnx_simulator_top1']:.3f}); top-1 agreement with the simulator "
              f"{results['onnx_top1_agreement']:.3f} %, logit difference max {results['onnx_max_abs_logit_diff']:.4f} "
              f"mean {results['onnx_mean_abs_logit_diff']:.5f}; simulator margin of the changed classifications at "
              f"most {results['onnx_max_flipped_margin']:.4f}; {results['onnx_integer_kernels']} integer kernels")
    if "sensitivity_seconds" in results:
        print(f"sensitivity: {results['sensitivity_images']} calibration images, {results['sensitivity_seconds']:.0f} s; "
              f"most sensitive weights at the smallest bits: {', '.join(results['sensitivity_worst'])}"
              + (f"; table {results['sensitivity_csv']}, figure {results['sensitivity_figure']}"
                 if "sensitivity_csv" in results else ""))
    if "mp_objective" in results:
        print(f"mixed precision: {results['mp_layers']} layers chosen; mean weight bits "
              f"{results['mp_mean_weight_bits']:.4f}, mean activation bits {results['mp_mean_activation_bits']:.4f}, "
              f"{results['mp_gbops']:.4f} GBOPs per image (every quantized layer counted); summed KL "
              f"{results['mp_objective']:.4g}" + (f"; plan {results['mp_plan_file']}" if "mp_plan_file" in results else ""))
    for key in ("activation_stats_csv", "dump_file"):
        if key in results:
            print(f"{key.replace('_', ' ')}: {results[key]}")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    print(f" * Prec@1 {results['top1']:.3f} Prec@5 {results['top5']:.3f}")


def recipe_label(config, methods) -> str:
    """A short name of a recipe for run lists: weights and activation bits (``W4A8``; ``fp32``),
    the other seeds' kinds, clipping, allocation and corrections, and the methods after the seed,
    e.g. ``W4A8 laplace bcw block qdrop0.5``."""
    if config is None:
        return "fp32"
    parts = ["".join(f"{letter}{spec.bits}" for letter, spec in (("W", config.weights), ("A", config.activations))
                     if spec is not None)]
    kinds = {spec.kind.value for spec in (config.weights, config.activations) if spec is not None and not spec.kind.grid}
    parts += sorted(kinds)
    if config.activations is not None and config.activations.clipping != "no":
        parts.append(config.activations.clipping)
    for flag, on in (("baa", config.activations is not None and config.activations.bit_allocation),
                     ("baw", config.weights is not None and config.weights.bit_allocation),
                     ("bcw", config.bias_correct_weights), ("vcw", config.variance_correct_weights),
                     ("bca", config.bias_correct_activations), ("improved", all(
                         getattr(config.departures, name) for name in config.departures.__dataclass_fields__)),
                     ("equalize", methods.equalize), (methods.rounding.value, methods.learns_rounding),
                     (f"qdrop{methods.qdrop:g}", methods.qdrop > 0), (f"qat{methods.qat_epochs}", methods.qat_epochs > 0)):
        if on:
            parts.append(flag)
    return " ".join(parts)


@contextmanager
def tracked_run(arguments: dict[str, str], uri: str | None, experiment: str, process, name: str, recipe: str):
    """The mlflow run of this invocation (rank 0 only; None elsewhere), named ``name``, with the
    command line's ``arguments`` as its parameters and ``recipe`` as a tag."""
    if not process.is_main:
        yield None
        return
    from inference.tracking import mlflow_run

    with mlflow_run(uri, experiment, {"args": arguments}, name=name, tags={"recipe": recipe}) as mlflow:
        yield mlflow


def log_to_mlflow(mlflow, results: dict, uri: str | None) -> None:
    from inference.tracking import log_results, store_errors

    with store_errors(uri):
        mlflow.log_params({key: str(value)[:500] for key, value in flatten_quantization(results["quantization"]).items()})
        log_results(mlflow, results, statistics_file=results.get("statistics_file"))
        if results.get("calibration"):
            mlflow.log_params({"calibration.source": results["calibration"][:500],
                               "calibration.images": results["calibration_images"],
                               "calibration.overlaps_eval": results["calibration_overlaps_eval"]})
        for key in ("report_csv", "activation_stats_csv", "sweep_csv", "dump_file", "onnx_encodings", "sensitivity_csv",
                    "sensitivity_figure", "mp_plan_file"):
            if results.get(key):
                mlflow.log_artifact(results[key])
        if results.get("qat_losses"):
            log_training_curve(mlflow, results["qat_losses"])


def log_training_curve(mlflow, losses: list[float]) -> None:
    """The QAT loss of every step as metric ``qat.loss`` (step = training step), in batches of 1000."""
    import time

    from mlflow.entities import Metric

    client, run_id, now = mlflow.tracking.MlflowClient(), mlflow.active_run().info.run_id, int(time.time() * 1000)
    metrics = [Metric("qat.loss", float(loss), now, step) for step, loss in enumerate(losses)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


