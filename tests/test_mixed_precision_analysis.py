"""analysis/mixed_precision.py in quick mode: the uniform row, the mixed row at its spend, resumable."""
import sqlite3

import pandas as pd

from analysis import mixed_precision


def test_quick_mixed_precision_table_compares_uniform_and_mixed_at_the_same_bits(tmp_path):
    argv = ["--quick", "--out", str(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert mixed_precision.main(argv) == 0
    table = pd.read_csv(tmp_path / "mixed_precision.csv").set_index("recipe")
    uniform = table.loc["uniform 4-bit weights, nearest"]
    mixed = table.loc[[label for label in table.index if label.startswith("mixed")][0]]
    assert mixed.mean_weight_bits <= uniform.mean_weight_bits and mixed.images == uniform.images == 200
    assert (tmp_path / "fmnist_mobilenet.sensitivity.csv").is_file() and (tmp_path / "mixed_precision.png").is_file()
    assert runs(tmp_path) == 3
    assert mixed_precision.main(argv) == 0   # resumed: every row read back, nothing run again
    assert runs(tmp_path) == 3


def runs(folder) -> int:
    with sqlite3.connect(folder / "mlflow.db") as connection:
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
