"""The files a CLI run reads and writes around the library's recipe: activation statistics
(``-sm collect`` / ``use`` in ``-sf``), learned roundings beside them, fine-tuned QAT state
(``--load-qat`` / ``--save-qat``), each checked against the model before use."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.errors import UserError
from pytorch_quantizer.formats.safe_io import file_problem
from pytorch_quantizer.api.options import Methods, Rounding
from pytorch_quantizer.api.recipe import RecipeState
from pytorch_quantizer.quantizers.config import QuantConfig

ROUNDING_FLAGS = {Rounding.ADAROUND: "--adaround", Rounding.BLOCK: "--reconstruct block"}


@dataclass(frozen=True)
class RecipeFiles:
    """``statistics_mode``: no (statistics of each batch), collect (measure on calibration images
    and save both granularities), use (load); ``calibrate``: measure in memory (``-ac``);
    ``statistics_point``: where statistics are observed, in the file name (``input``, ``output``,
    ``output.rectified``, with ``.equalized``); ``qat_recipe``: the kinds a QAT file belongs to."""

    model_name: str
    statistics_mode: str = "no"
    statistics_folder: Path = Path("statistics")
    statistics_point: str = "output"
    calibrate: bool = False
    image_averaged_range: bool = False
    load_qat: Path | None = None
    save_qat: Path | None = None
    qat_recipe: str = ""
    qat_batch_size: int = 128
    export_onnx: Path | None = None
    verify_onnx: bool = False
    kind_text: str = ""   # the --qtype text, for messages

    @property
    def collects(self) -> bool:
        return self.statistics_mode == "collect"

    @property
    def uses(self) -> bool:
        return self.statistics_mode == "use"

    @property
    def fixed_ranges(self) -> bool:
        return self.statistics_mode in ("collect", "use") or self.calibrate

    def statistics_path(self, per_channel: bool) -> Path:
        granularity = "per_channel" if per_channel else "per_tensor"
        return self.statistics_folder / f"{self.model_name}.{granularity}.{self.statistics_point}.stats.pt"

    def rounding_path(self, methods: Methods) -> Path:
        method = "block-rounding" if methods.rounding == Rounding.BLOCK else "rounding"
        return self.statistics_folder / f"{self.model_name}.{self.statistics_point}.{method}.pt"


def rounding_recipe(methods: Methods, config: QuantConfig) -> str:
    """The recipe a rounding file belongs to: the learning method, QDrop, joined blocks and the whole
    resolved configuration (a frozen dataclass)."""
    steps = " --learn-step-sizes" if methods.learn_step_sizes else ""
    steps += f" --joint-blocks {methods.joint_blocks}" if methods.joint_blocks else ""
    return f"{ROUNDING_FLAGS[methods.rounding]}{steps} qdrop={methods.qdrop} {config!r}"


class StoredState:
    """Reads this run's stored state for the entered ``QuantizedModel`` (the recipe calls it):
    statistics (``-sm use``), learned rounding (``-sm use`` with a learning method), a fine-tuned
    state (``--load-qat``), each checked against the model's layers. ``calibration_images``: the
    count recorded in the statistics file read."""

    def __init__(self, files: RecipeFiles, config: QuantConfig, methods: Methods, fingerprint: str):
        self.files, self.config, self.methods, self.fingerprint = files, config, methods, fingerprint
        self.calibration_images: int | None = None

    def __call__(self, quantized) -> RecipeState:
        from pytorch_quantizer.formats.qat_io import layer_shapes, load_qat
        from pytorch_quantizer.formats.rounding_io import load_rounding
        from pytorch_quantizer.formats.stats_io import load_statistics
        from pytorch_quantizer.model.calibration import statistics_recipe
        from pytorch_quantizer.model.weights import integer_grid_layers

        files, config, methods = self.files, self.config, self.methods
        state = RecipeState()
        if files.uses and config.activations is not None and config.activations.kind.grid:
            per_channel = config.activations.per_channel
            stored = load_statistics(files.statistics_path(per_channel), files.model_name, per_channel,
                                     files.statistics_point, sorted(quantized.activation_plans()),
                                     f"collect statistics for {files.model_name} again with -sm collect",
                                     ("-pcq_a", "--act-quant-point"), self.fingerprint,
                                     statistics_recipe(config))
            state.statistics, self.calibration_images = stored.layers, stored.calibration_images
        if files.uses and methods.learns_rounding:
            shapes = {name: quantized.float_params[name][0].shape for name in integer_grid_layers(quantized)}
            fix = (f"learn it again with {ROUNDING_FLAGS[methods.rounding]} -sm collect (same model and quantization "
                   "flags)")
            state.rounding, state.activation_scales = load_rounding(
                files.rounding_path(methods), files.model_name, rounding_recipe(methods, config), shapes, fix,
                self.fingerprint)
        if files.load_qat is not None:
            fix = "save it again with --qat-epochs N --save-qat PATH (same model and --qtype / -qw)"
            state.trained = load_qat(files.load_qat, files.model_name, files.qat_recipe, layer_shapes(quantized), fix,
                                     self.fingerprint)
        return state


def statistics_description(files: RecipeFiles, config: QuantConfig, calibration, loaded_images: int | None) -> str:
    """How this run's activation ranges were settled, for the results."""
    activations = config.activations
    if files.load_qat is not None:
        return f"fine-tuned model from {files.load_qat}"
    if activations is not None and activations.kind.calibrated_activations:
        return f"{files.kind_text} calibrated on {calibration.images} images of {calibration.source}"
    if files.uses:
        return f"from {files.statistics_path(activations.per_channel)} ({loaded_images} images)"
    if files.collects or files.calibrate:
        return f"calibrated on {calibration.images} images of {calibration.source}"
    return "on the fly (each evaluated batch)"


def save_collected(files: RecipeFiles, config: QuantConfig, state: RecipeState, images: int, fingerprint: str) -> Path:
    """``-sm collect``: the statistics of both granularities, each in its own file (one later ``-sm
    use`` finds the file whatever its ``-pcq_a``), with the fingerprint of the weights and the parts
    of the recipe they depend on; returns the path of this run's granularity."""
    from pytorch_quantizer.formats.stats_io import StatisticsFile, save_statistics
    from pytorch_quantizer.model.calibration import statistics_recipe

    per_channel = config.activations.per_channel
    recipe = statistics_recipe(config, files.image_averaged_range)
    for granularity, layers in ((per_channel, state.statistics), (not per_channel, state.other_statistics or {})):
        save_statistics(StatisticsFile(files.model_name, images, granularity, files.statistics_point,
                                       config.activations.clipping, layers, weights_fingerprint=fingerprint,
                                       recipe=recipe), files.statistics_path(granularity))
    return files.statistics_path(per_channel)


def save_rounding_file(files: RecipeFiles, config: QuantConfig, methods: Methods, state: RecipeState,
                       fingerprint: str) -> Path:
    from pytorch_quantizer.formats.rounding_io import save_rounding

    path = files.rounding_path(methods)
    save_rounding(path, state.rounding, files.model_name, rounding_recipe(methods, config), fingerprint,
                  state.activation_scales)
    return path


def check_collect_targets(files: RecipeFiles, config: QuantConfig, methods: Methods) -> None:
    """-sm collect will write the statistics of both granularities (and a learned rounding): none of
    those paths may be a folder or a special file, found before any work rather than after calibrating."""
    if not files.collects or config.activations is None:
        return
    targets = [files.statistics_path(True), files.statistics_path(False)]
    if methods.learns_rounding:
        targets.append(files.rounding_path(methods))
    for path in targets:
        problem = file_problem(path)
        if problem not in (None, "does not exist"):
            raise UserError(f"-sm collect would write {path}, which {problem}; move it away or point -sf at another "
                            "folder")


def require_statistics_file(files: RecipeFiles, config: QuantConfig) -> None:
    """-sm use needs an existing file: checked before any work."""
    if files.uses:
        path = files.statistics_path(config.activations.per_channel)
        problem = file_problem(path)
        if problem == "does not exist":
            raise UserError(f"-sm use: no statistics file {path} for {files.model_name}; run with -sm collect first "
                            "(same -pcq_a, --act-quant-point and --equalize) or point -sf at its folder")
        if problem is not None:
            raise UserError(f"-sm use: statistics file {path} {problem}; move it away and run with -sm collect, or "
                            "point -sf at another folder")

