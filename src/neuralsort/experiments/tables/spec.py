"""The paper's three tables: rows, columns, metrics and the paper's numbers.

The numbers are Grover et al., ICLR 2019, Tables 1-3. ``neuralsort reproduce`` reads the cell
names from here (its grids in ``configs/tables/`` must name the same rows and columns) and
``neuralsort report`` prints our runs beside the paper's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["BUDGETS", "TABLES", "TableSpec"]

BUDGETS: tuple[str, ...] = ("smoke", "cpu", "quality", "paper")  # in increasing order of trust


@dataclass(frozen=True)
class TableSpec:
    """One of the paper's tables: its rows, columns, metrics and the paper's numbers.

    A cell is named ``f"{column}-{row}"`` (``mnist-dknn-deterministic``, ``n5-sinkhorn``); Table 3
    also accepts extra cells ``f"{column}-{row}-k{K}"`` that rerun a row at another ``k``.
    ``metrics`` lists ``(metrics.json key, label, kind)`` with kind ``pct`` (a fraction shown in
    percent), ``frac`` (three decimals) or ``num`` (two decimals); ``paper`` maps
    ``(row, column)`` to the paper's values of the same metrics (``None`` where absent);
    ``unavailable`` says why a column's cells cannot run where our results were made.
    """

    number: int
    title: str
    rows: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]
    metrics: tuple[tuple[str, str, str], ...]
    paper: dict[tuple[str, str], tuple[float | None, ...]] = field(default_factory=dict)
    note: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)  # column -> why it has no runs

    @property
    def final_metric(self) -> str:
        """The metrics.json key whose presence marks a finished run."""
        return self.metrics[0][0]

    def cell(self, row: str, column: str) -> str:
        """The cell name of ``row`` x ``column``."""
        return f"{column}-{row}"

    def cells(self) -> list[str]:
        """All main cell names, column by column."""
        return [self.cell(r, c) for c, _ in self.columns for r, _ in self.rows]

    def parse(self, cell: str) -> tuple[str, str, int | None] | None:
        """``(row, column, k)`` of a cell name (``k`` only for ``-kK`` variants), or None."""
        for col, _ in self.columns:
            if not cell.startswith(col + "-"):
                continue
            rest = cell[len(col) + 1 :]
            k = None
            m = re.fullmatch(r"(.+)-k(\d+)", rest)
            if m and self.number == 3 and m.group(1) in dict(self.rows):
                rest, k = m.group(1), int(m.group(2))
            if rest in dict(self.rows):
                return rest, col, k
        return None


_T3_ROWS = (
    ("knn", "kNN"),
    ("knn-pca", "kNN+PCA"),
    ("knn-ae", "kNN+AE"),
    ("dknn-deterministic", "kNN + deterministic NeuralSort"),
    ("dknn-stochastic", "kNN + stochastic NeuralSort"),
    ("cnn", "CNN (no kNN)"),
)
_T3_PAPER = {
    "mnist": (0.972, 0.976, 0.976, 0.995, 0.994, 0.994),
    "fashion-mnist": (0.858, 0.859, 0.875, 0.935, 0.934, 0.934),
    "cifar10": (0.354, 0.409, 0.442, 0.907, 0.895, 0.951),
}
_T1_ROWS = (
    ("vanilla", "Vanilla RS"),
    ("sinkhorn", "Sinkhorn"),
    ("gumbel-sinkhorn", "Gumbel-Sinkhorn"),
    ("deterministic", "Deterministic NeuralSort"),
    ("stochastic", "Stochastic NeuralSort"),
)
_T1_PAPER = {  # (all correct, positions correct) for n = 3, 5, 7, 9, 15
    "vanilla": ((0.467, 0.801), (0.093, 0.603), (0.009, 0.492), (0.0, 0.113), (0.0, 0.067)),
    "sinkhorn": ((0.462, 0.561), (0.038, 0.293), (0.001, 0.197), (0.0, 0.143), (0.0, 0.078)),
    "gumbel-sinkhorn": (
        (0.484, 0.575),
        (0.033, 0.295),
        (0.001, 0.189),
        (0.0, 0.146),
        (0.0, 0.078),
    ),
    "deterministic": (
        (0.930, 0.951),
        (0.837, 0.927),
        (0.738, 0.909),
        (0.649, 0.896),
        (0.386, 0.857),
    ),
    "stochastic": ((0.927, 0.950), (0.835, 0.926), (0.741, 0.909), (0.646, 0.895), (0.418, 0.862)),
}
_T1_N = (3, 5, 7, 9, 15)
_T2_ROWS = (("constant", "Constant"), ("vanilla", "Vanilla NN"), *_T1_ROWS[1:])
_T2_PAPER = {  # (MSE x 1e-4, R^2) for n = 5, 9, 15
    "constant": ((356.79, 0.00), (227.31, 0.00), (146.94, 0.00)),
    "vanilla": ((1004.70, 0.85), (699.15, 0.82), (562.97, 0.79)),
    "sinkhorn": ((343.60, 0.25), (231.87, 0.19), (156.27, 0.04)),
    "gumbel-sinkhorn": ((344.28, 0.25), (232.56, 0.23), (157.34, 0.06)),
    "deterministic": ((45.50, 0.95), (34.98, 0.94), (34.78, 0.92)),
    "stochastic": ((33.80, 0.94), (31.43, 0.93), (29.34, 0.90)),
}
_T2_N = (5, 9, 15)

TABLES: dict[int, TableSpec] = {
    1: TableSpec(
        number=1,
        title="Table 1: sorting four-digit MNIST numbers, all correct (positions correct)",
        rows=_T1_ROWS,
        columns=tuple((f"n{n}", f"n={n}") for n in _T1_N),
        metrics=(
            ("test_exact", "all correct", "frac"),
            ("test_elementwise", "positions correct", "frac"),
        ),
        paper={
            (row, f"n{n}"): vals
            for row, per_n in _T1_PAPER.items()
            for n, vals in zip(_T1_N, per_n, strict=True)
        },
    ),
    2: TableSpec(
        number=2,
        title="Table 2: median regression, test MSE x 1e-4 (R^2)",
        rows=_T2_ROWS,
        columns=tuple((f"n{n}", f"n={n}") for n in _T2_N),
        metrics=(
            ("test_mse", "MSE x 1e-4", "num"),
            ("test_r2_corr", "R^2 (squared correlation)", "frac"),
            ("test_r2", "1 - MSE/Var", "frac"),
        ),
        paper={
            (row, f"n{n}"): (*vals, None)
            for row, per_n in _T2_PAPER.items()
            for n, vals in zip(_T2_N, per_n, strict=True)
        },
        note="The paper's R^2 column behaves like a squared correlation: compare it with our "
        "`test_r2_corr`; `test_r2` (1 - MSE/Var) is shown beside it.",
    ),
    3: TableSpec(
        number=3,
        title="Table 3: test accuracy of kNN classifiers and baselines",
        rows=_T3_ROWS,
        columns=(
            ("mnist", "MNIST"),
            ("fashion-mnist", "Fashion-MNIST"),
            ("cifar10", "CIFAR-10"),
            ("cifar100", "CIFAR-100"),
        ),
        metrics=(("test_acc", "test accuracy", "pct"), ("val_acc", "validation accuracy", "pct")),
        paper={
            (row, col): (vals[i], None)
            for col, vals in _T3_PAPER.items()
            for i, (row, _) in enumerate(_T3_ROWS)
        },
        note="CIFAR-100 is not in the paper's table; its cells have no paper value. There was "
        "no copy of it where our runs were made; with `cifar-100-python/` in the data folder, "
        "`neuralsort reproduce --table 3 --budget paper --only cifar100-knn cifar100-knn-pca "
        "cifar100-knn-ae cifar100-dknn-deterministic cifar100-dknn-stochastic cifar100-cnn "
        "--data_dir DIR` runs them.",
        unavailable={"cifar100": "data not available here"},
    ),
}
