"""Property-based: random flag combinations and random damaged files given to the CLI entry point
end with exit 0 or 2, never a traceback, one error line on exit 2, no mlflow run left RUNNING and
no existing file lost."""
import contextlib
import io
import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from test_error_catalogue import ERROR_PREFIX

FAST = ("-a", "fmnist_resnet20", "-ss", "16", "-b", "16")
FRAGMENTS = {
    "qtype": st.sampled_from(["int2", "int4", "int8", "int17", "f32", "fp4", "int"]).map(lambda v: ("--qtype", v)),
    "qweight": st.sampled_from(["int3", "int8", "kmeans4", "f32", "int0"]).map(lambda v: ("-qw", v)),
    "clipping": st.sampled_from(["no", "laplace", "gaus", "2std", "mse", "2xstd", "-1std"]).map(lambda v: ("-c", v)),
    "weight_clipping": st.sampled_from(["no", "laplace", "bogus"]).map(lambda v: ("--weight-clipping", v)),
    "switches": st.sets(st.sampled_from(["-pcq_a", "-pcq_w", "-baa", "-baw", "-bcw", "-vcw", "-bca", "-mtq", "--q_off",
                                         "--improved", "-me", "-ac", "-sba", "-kld", "-hs", "-pz", "-s"]),
                        max_size=4).map(tuple),
    "bata": st.sampled_from(["3.5", "9", "0", "-1", "x", "2"]).map(lambda v: ("-bata", v)),
    "stats_mode": st.sampled_from(["no", "collect", "use", "bad"]).map(lambda v: ("-sm", v)),
    "cs": st.sampled_from(["16", "0", "x"]).map(lambda v: ("-cs", v)),
    "keep": st.sampled_from(["", "conv1", "none", "bogus*", "layer1.*"]).map(lambda v: ("--keep-8bit", v)),
    "device": st.sampled_from(["cpu", "tpu", "cuda:7", "cuda"]).map(lambda v: ("--device", v)),
    "point": st.sampled_from(["input", "output", "middle"]).map(lambda v: ("--act-quant-point", v)),
    "subset": st.sampled_from(["0", "16", "-3", "100000000"]).map(lambda v: ("-ss", v)),
}


def call_main(argv: list[str]) -> tuple[int, str]:
    from inference import inference_sim

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = inference_sim.main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, stderr.getvalue()


def running_runs(uri: str) -> int:
    path = Path(uri[len("sqlite:///"):])
    if not path.exists():
        return 0
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]


def assert_clean_outcome(code, stderr: str, uri: str) -> None:
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith((ERROR_PREFIX, "inference_sim.py: error"))]
    assert len(errors) == (1 if code == 2 else 0), stderr
    assert running_runs(uri) == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(chosen=st.lists(st.sampled_from(sorted(FRAGMENTS)), max_size=4, unique=True).flatmap(
    lambda names: st.tuples(*(FRAGMENTS[name] for name in names))))
def test_random_flag_combinations_exit_0_or_2_with_one_line(chosen):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        results = folder / "results.json"
        results.write_text('{"kept": true}\n')
        argv = [*FAST, "-sf", str(folder / "stats"), "--results-json", str(results), "--mlflow-uri", uri]
        for fragment in chosen:
            argv.extend(fragment)
        code, stderr = call_main(argv)
        event(f"exit {code}")
        assert_clean_outcome(code, stderr, uri)
        payload = json.loads(results.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}"))
        assert payload == {"kept": True} if code == 2 else "top1" in payload


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=3000), st.text(max_size=200).map(str.encode),
                         st.binary(min_size=10, max_size=400).map(lambda tail: b"PK\x03\x04" + tail)))
def test_random_bytes_as_weights_or_statistics_exit_2_with_one_line(content):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        weights = folder / "weights.pt"
        weights.write_bytes(content)
        code, stderr = call_main([*FAST, "--weights", str(weights), "--mlflow-uri", uri])
        assert_clean_outcome(code, stderr, uri)
        assert code == 2 and weights.read_bytes() == content
        stats = folder / "stats"
        stats.mkdir()
        (stats / "fmnist_resnet20.per_tensor.output.stats.pt").write_bytes(content)
        code, stderr = call_main([*FAST, "--qtype", "int4", "-sm", "use", "-sf", str(stats), "--mlflow-uri", uri])
        assert_clean_outcome(code, stderr, uri)
        assert code == 2
