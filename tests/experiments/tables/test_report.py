"""``neuralsort report`` on small fake run folders: values, paper numbers, states, links, plots."""

from __future__ import annotations

import csv
import json
import pathlib
import re

import pytest
import yaml

from neuralsort.experiments.cli import main
from neuralsort.experiments.tables.plots import exact_vs_images, plot_exact_vs_images
from neuralsort.experiments.tables.report import write_report
from neuralsort.experiments.tables.runs import cell_status, find_runs
from neuralsort.experiments.tables.spec import TABLES

PAPER_MD = pathlib.Path(__file__).resolve().parents[4] / "shared" / "PAPER.md"
HW = {"summary": "CPU Test Xeon, 2 threads", "device": "cpu"}


def fake_run(
    root: pathlib.Path,
    table: int,
    budget: str,
    cell: str,
    *,
    metrics: dict | None = None,
    epochs_done: int = 0,
    num_epochs: int = 10,
    checkpoint: bool = False,
    hardware: dict | None = HW,
    failed: str | None = None,
    versions: bool = True,
    torch_version: str = "2.13.0",
    threads: int | None = None,
    run_info: dict | None = None,
) -> pathlib.Path:
    """A run folder as the commands and `reproduce` leave it (no real training)."""
    path = root / f"table{table}" / budget / cell
    path.mkdir(parents=True)
    cfg = {"num_epochs": num_epochs, "device": "auto", "threads": threads}
    if versions:
        cfg["_run"] = {"versions": {"torch": torch_version}, **(run_info or {})}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = [{"event": "start"}] + [{"epoch": e, "val_acc": 0.5} for e in range(1, epochs_done + 1)]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if checkpoint:
        (path / "last.pt").write_bytes(b"not read by the report")
    if hardware is not None:
        attempt = {"status": "failed" if failed else "done", "hardware": hardware, "wall_s": 12.5}
        if failed:
            attempt.update(error=failed, rc=2)
        (path / "reproduce.json").write_text(json.dumps({"overrides": {}, "attempts": [attempt]}))
    return path


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    fake_run(root, 3, "cpu", "mnist-dknn-deterministic", metrics={"test_acc": 0.9876, "k": 9})
    fake_run(root, 3, "smoke", "mnist-dknn-deterministic", metrics={"test_acc": 0.5, "k": 9})
    fake_run(root, 3, "cpu", "mnist-knn-ae", epochs_done=3, checkpoint=True)  # half-finished
    fake_run(root, 3, "cpu", "mnist-cnn", failed="neuralsort baseline: error: data set missing")
    for k, acc in ((1, 0.97), (3, 0.975)):
        fake_run(
            root, 3, "cpu", f"mnist-dknn-deterministic-k{k}", metrics={"test_acc": acc, "k": k}
        )
    for n, exact in ((3, 0.91), (5, 0.8)):
        fake_run(
            root,
            1,
            "cpu",
            f"n{n}-deterministic",
            metrics={"test_exact": exact, "test_elementwise": 0.95},
        )
    # no reproduce.json and a config without versions: hardware unknown
    fake_run(
        root,
        2,
        "cpu",
        "n5-constant",
        metrics={"test_mse": 355.0, "test_r2_corr": 0.0, "test_r2": -0.01},
        hardware=None,
        versions=False,
    )
    # made outside reproduce with a CPU-only torch build: the device is known, the CPU is not
    fake_run(
        root,
        2,
        "cpu",
        "n9-constant",
        metrics={"test_mse": 220.0, "test_r2_corr": 0.0, "test_r2": 0.0},
        hardware=None,
        torch_version="2.13.0+cpu",
        threads=1,
    )
    # made outside reproduce by a version that records the CPU model at the run's start
    fake_run(
        root,
        2,
        "cpu",
        "n15-constant",
        metrics={"test_mse": 240.0, "test_r2_corr": 0.0, "test_r2": 0.0},
        hardware=None,
        torch_version="2.13.0+cpu",
        threads=2,
        run_info={"cpu": "Test EPYC 9000"},
    )
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tables_show_ours_paper_budget_hardware_and_links(results, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "ops_cpu-1threads.csv").write_text(
        "B,n,op,median_ms,vs_floor\n4,8,floor: softmax,1.0,1.0\n4,8,neural_sort,2.0,2.0\n"
        "4,16,floor: softmax,1.0,1.0\n4,16,neural_sort,3.0,3.0\n"
    )
    assert main(["report", str(results), "--bench_dir", str(bench)]) == 0
    md3 = (results / "table3.md").read_text()
    # the finished cpu run wins over the smoke run in the grid, with the paper's value beside it
    assert "| kNN + deterministic NeuralSort | **98.76%** (cpu) / 99.5% |" in md3
    assert "[table3/cpu/mnist-dknn-deterministic/](table3/cpu/mnist-dknn-deterministic/)" in md3
    assert "CPU Test Xeon, 2 threads" in md3
    assert "half-finished (cpu, epoch 3 of 10)" in md3
    assert "half-finished (epoch 3 of 10; resumable)" in md3
    assert "failed (neuralsort baseline: error: data set missing; details in" in md3
    assert "| kNN | not run / 97.2% |" in md3
    assert "not run / 85.8%" in md3  # Fashion-MNIST column, nothing run
    assert "![table3_accuracy_vs_k](table3_accuracy_vs_k.png)" in md3
    # every link points at a folder that exists
    for link in re.findall(r"\]\((table\d/[^)]*)\)", md3):
        assert (results / link).is_dir(), link

    rows = {(r["cell"], r["budget"]): r for r in read_csv(results / "table3.csv")}
    det = rows[("mnist-dknn-deterministic", "cpu")]
    assert float(det["ours_test_acc"]) == pytest.approx(0.9876)
    assert float(det["paper_test_acc"]) == pytest.approx(0.995)
    assert det["status"] == "done" and det["run_dir"] == "table3/cpu/mnist-dknn-deterministic"
    assert float(det["wall_time_s"]) == 12.5
    assert rows[("mnist-knn", "")]["status"] == "not run"
    assert rows[("mnist-knn", "")]["ours_test_acc"] == ""
    assert rows[("mnist-knn-ae", "cpu")]["ours_test_acc"] == ""  # never a half-finished value
    assert rows[("cifar100-cnn", "")]["paper_test_acc"] == ""

    md1 = (results / "table1.md").read_text()
    assert "**0.910 (0.950)** (cpu) / 0.930 (0.951)" in md1
    assert "not run / 0.467 (0.801)" in md1
    md2 = (results / "table2.md").read_text()
    assert "**355.00 (0.000)** (cpu) / 356.79 (0.000)" in md2
    rows2 = {r["cell"]: r for r in read_csv(results / "table2.csv")}
    assert rows2["n5-constant"]["hardware"] == "unknown"
    assert rows2["n9-constant"]["hardware"] == "cpu, 1 thread (torch 2.13.0+cpu)"
    assert rows2["n15-constant"]["hardware"] == "CPU Test EPYC 9000, 2 threads (torch 2.13.0+cpu)"

    for png in ("table3_accuracy_vs_k.png", "table1_exact_vs_n.png", "ops_benchmark.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "ops_cpu-1threads.csv" in (results / "ops_benchmark.md").read_text()


def test_exact_against_images_counts_the_warm_start(tmp_path):
    root = tmp_path / "results"

    def curve(cell, batch, n, steps, init_from=None):
        path = fake_run(
            root, 1, "quality", cell, metrics={"test_exact": 0.5, "init_from": init_from}
        )
        (path / "config.yaml").write_text(yaml.safe_dump({"batch_size": batch, "n": n}))
        log = [{"event": "start"}] + [
            {"epoch": i, "step": s, "val_exact": s / 1e4} for i, s in steps
        ]
        (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        return path

    scorer = curve("n5-deterministic", 12, 5, [(1, 100), (2, 200), (2, 200)])  # a resumed epoch
    curve("n15-stochastic", 4, 15, [(1, 10), (2, 20)], init_from=str(scorer / "best.pt"))
    fake_run(root, 1, "quality", "n5-sinkhorn", metrics={"test_exact": 0.1})  # not NeuralSort
    runs = find_runs(root, 1)
    got = {run.cell: points for run, points in exact_vs_images(runs)}
    assert got == {
        "n5-deterministic": [(6_000, 0.01), (12_000, 0.02)],
        "n15-stochastic": [(12_000 + 600, 0.001), (12_000 + 1_200, 0.002)],
    }
    assert plot_exact_vs_images(runs, tmp_path / "p.png") is None
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # the runs table says where a warm-started cell came from and what that took
    starts = {run.cell: run.warm_start for run in runs}
    assert starts == {
        "n5-deterministic": None,
        "n15-stochastic": "n5-deterministic",
        "n5-sinkhorn": None,
    }
    assert main(["report", str(root)]) == 0
    assert "| 0.2 min + warm start (n5-deterministic) |" in (root / "table1.md").read_text()


def test_a_run_made_outside_reproduce_counts_its_threads(tmp_path):
    root = tmp_path / "results"
    metrics = {"test_exact": 0.8, "train_seconds": 3600.0}
    kw = {"metrics": metrics, "hardware": None, "torch_version": "2.13.0+cpu"}
    fake_run(root, 1, "quality", "n5-deterministic", threads=2, **kw)
    fake_run(root, 1, "quality", "n3-deterministic", threads=None, **kw)  # threads unknown
    runs = {r.cell: r for r in find_runs(root, 1)}
    assert runs["n5-deterministic"].cpu_s == 7200.0 and runs["n5-deterministic"].wall_s == 3600
    assert runs["n3-deterministic"].cpu_s is None


def test_runs_show_note_net_wall_time_and_compute(tmp_path):
    root = tmp_path / "results"
    path = fake_run(root, 3, "cpu", "cifar10-cnn", metrics={"test_acc": 0.6})
    (path / "log.jsonl").write_text(
        json.dumps({"event": "setup", "model": "resnet8", "parameters": 77850}) + "\n"
    )
    rec = {
        "overrides": {"dataset": "imagefolder:/data/c10"},
        "note": "lossy JPEG copy of CIFAR-10",
        "attempts": [  # resumed once: both attempts count, each with its threads
            {"status": "interrupted", "wall_s": 1800.0, "hardware": {**HW, "torch_threads": 2}},
            {"status": "done", "wall_s": 1800.0, "hardware": {**HW, "torch_threads": 1}},
        ],
    }
    (path / "reproduce.json").write_text(json.dumps(rec))
    gpu = {"summary": "GPU H200", "device": "cuda"}
    path = fake_run(root, 3, "paper", "cifar10-knn", metrics={"test_acc": 0.3}, hardware=gpu)
    write_report(root, tables=[3])
    md = (root / "table3.md").read_text()
    # the grid names the budget and the note; the run list adds the overrides, net and time
    assert "**60.00%** (cpu; lossy JPEG copy of CIFAR-10) / 95.1%" in md
    row = next(line for line in md.splitlines() if line.startswith("| cifar10-cnn |"))
    # an override's folder without the machine's path to it
    assert "cpu (overrides: dataset=imagefolder:.../c10); lossy JPEG copy of CIFAR-10" in row
    assert "/data/c10" not in md
    assert "| resnet8 (77,850 parameters) |" in row and "| 60.0 min |" in row
    assert "not run: data not available here" in md  # CIFAR-100 has no copy here
    assert "2 finished runs;" in md and "1.5 CPU core-hours" in md and "0.0 GPU-hours" in md
    rows = {r["cell"]: r for r in read_csv(root / "table3.csv")}
    assert rows["cifar10-cnn"]["note"] == "lossy JPEG copy of CIFAR-10"
    assert json.loads(rows["cifar10-cnn"]["overrides"]) == {"dataset": "imagefolder:.../c10"}
    assert float(rows["cifar10-cnn"]["cpu_core_s"]) == 5400.0
    assert rows["cifar10-knn"]["cpu_core_s"] == "" and rows["cifar10-knn"]["net"] == ""


def test_readme_blocks_are_filled_from_the_run_folders(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\nkept\n<!-- report:table1 -->\nold\n<!-- /report:table1 -->\nkept too\n"
        "<!-- report:compute -->\n<!-- /report:compute -->\n"
    )
    assert main(["report", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "kept\n" in text and "kept too" in text
    # first metric only, linked to the run folder relative to the README
    link = "[0.910](results/table1/cpu/n3-deterministic/)"
    assert f"| Deterministic NeuralSort | {link} / 0.930" in text
    assert "not run / 0.467" in text and "finished runs;" in text
    # a second pass changes nothing
    assert main(["report", str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == text
    readme.write_text("no blocks\n")
    assert main(["report", str(results), "--readme", str(readme)]) == 2
    assert "no block to fill" in capsys.readouterr().err
    readme.write_text("<!-- report:table2 -->\nunclosed\n")
    assert main(["report", str(results), "--readme", str(readme)]) == 2


def test_plots_are_skipped_with_a_note_when_there_is_nothing_to_plot(tmp_path):
    root = tmp_path / "results"
    fake_run(root, 3, "cpu", "mnist-knn", metrics={"test_acc": 0.97, "k": 9})  # a single k
    write_report(root, bench_dir=tmp_path / "no-bench")
    md3 = (root / "table3.md").read_text()
    assert "Plot `table3_accuracy_vs_k.png` skipped: no row of Table 3" in md3
    assert not (root / "table3_accuracy_vs_k.png").exists()
    assert "skipped: no finished run of Table 1" in (root / "table1.md").read_text()
    assert not (root / "ops_benchmark.md").exists()  # no benchmark CSVs: no benchmark plot
    # nothing run at all: every cell of every table says so
    for n, spec in TABLES.items():
        rows = read_csv(root / f"table{n}.csv")
        assert {r["cell"] for r in rows} >= set(spec.cells())
        if n != 3:
            assert all(r["status"] == "not run" for r in rows)


def test_cell_status(tmp_path):
    p = tmp_path / "cell"
    assert cell_status(p, "test_acc") == "missing"
    p.mkdir()
    assert cell_status(p, "test_acc") == "missing"
    (p / "log.jsonl").write_text("{}\n")
    assert cell_status(p, "test_acc") == "started"
    (p / "last.pt").write_bytes(b"x")
    assert cell_status(p, "test_acc") == "partial"
    (p / "metrics.json").write_text(json.dumps({"val_acc": 0.5, "test_acc": None}))
    assert cell_status(p, "test_acc") == "partial"
    (p / "metrics.json").write_text(json.dumps({"test_acc": 0.5}))
    assert cell_status(p, "test_acc") == "done"


def test_missing_results_folder_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _paper_tables() -> list[list[list[str]]]:
    tables, current = [], []
    for line in PAPER_MD.read_text().splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _num(text: str) -> float:
    return float(text.rstrip("%").rstrip(".")) / (100 if text.endswith("%") else 1)


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="needs the project's ../shared/PAPER.md")
def test_paper_constants_match_paper_md():
    t3, t1, t2 = _paper_tables()
    for label_row in t3[2:]:
        label, *vals = label_row
        row = next(r for r, lab in TABLES[3].rows if lab == label)
        for (col, _), v in zip(TABLES[3].columns, vals, strict=False):
            assert TABLES[3].paper[(row, col)][0] == pytest.approx(_num(v)), (row, col)
    for spec, md in ((TABLES[1], t1), (TABLES[2], t2)):
        for label_row in md[2:]:
            label, *vals = label_row
            row = next(r for r, lab in spec.rows if lab == label)
            for (col, _), v in zip(spec.columns, vals, strict=True):
                a, b = re.fullmatch(r"([\d.]+) \(([\d.]+)\)", v).groups()
                assert spec.paper[(row, col)][:2] == pytest.approx((_num(a), _num(b))), (row, col)


def test_one_model_every_n_block(tmp_path):
    root = tmp_path / "results"
    by_n = {str(n): {"exact": e, "elementwise": 0.9} for n, e in ((3, 0.93), (5, 0.81), (15, 0.2))}
    fake_run(
        root,
        1,
        "cpu",
        "n5-deterministic",
        metrics={"test_exact": 0.81, "test_elementwise": 0.9, "test_by_n": by_n},
    )
    # a baseline tested at its own n only: not in the block
    fake_run(root, 1, "cpu", "n5-vanilla", metrics={"test_exact": 0.5, "test_by_n": {"5": {}}})
    write_report(root, tables=[1])
    md = (root / "table1.md").read_text()
    block = md.split("## One model, every n", 1)[1].split("## Runs", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert rows[2] == "| Deterministic NeuralSort: n=5 (cpu) | 0.930 | **0.810** | - | - | 0.200 |"
    paper = "| Deterministic NeuralSort: paper, trained at each n |"
    assert rows[3] == paper + " 0.930 | 0.837 | 0.738 | 0.649 | 0.386 |"
    assert len(rows) == 4 and "Vanilla" not in block
    fake_run(root, 1, "cpu", "n3-deterministic", metrics={"test_exact": 0.9})
    write_report(root, tables=[1])
    assert "## One model, every n" in (root / "table1.md").read_text()
    empty = tmp_path / "empty"
    fake_run(empty, 2, "cpu", "n5-deterministic", metrics={"test_mse": 40.0})
    write_report(empty, tables=[2])
    assert "One model, every n" not in (empty / "table2.md").read_text()


def test_attempts_killed_before_recording_time_count_by_the_runs_own_clock(tmp_path):
    root = tmp_path / "results"
    metrics = {"test_acc": 0.89, "wall_time_s": 7200.0}  # every attempt, to its last checkpoint
    path = fake_run(root, 3, "cpu", "cifar10-cnn", metrics=metrics)
    rec = {
        "attempts": [  # a session ended under the first two: no time recorded for them
            {"status": "running", "hardware": {**HW, "torch_threads": 1}},
            {"status": "running", "resumed": True, "hardware": {**HW, "torch_threads": 1}},
            {"status": "done", "wall_s": 1800.0, "hardware": {**HW, "torch_threads": 1}},
        ],
    }
    (path / "reproduce.json").write_text(json.dumps(rec))
    write_report(root, tables=[3])
    row = next(
        line for line in (root / "table3.md").read_text().splitlines()
        if line.startswith("| cifar10-cnn |")
    )  # fmt: skip
    assert "| 120.0 min |" in row
    rows = {r["cell"]: r for r in read_csv(root / "table3.csv")}
    assert float(rows["cifar10-cnn"]["cpu_core_s"]) == 7200.0


def test_a_killed_attempt_counts_to_its_last_log_line_at_its_own_thread_count(tmp_path):
    # one thread until it was killed, then resumed (a day later) with two: each span counts
    # with its own threads, and the killed one ends at the last line it logged
    root = tmp_path / "results"
    metrics = {"test_acc": 0.89, "wall_time_s": 99999.0}
    path = fake_run(root, 3, "cpu", "cifar10-cnn", metrics=metrics)
    log = [
        {"time": "2026-01-01T10:00:05.000", "event": "start"},
        {"time": "2026-01-01T10:50:00.000", "epoch": 1},
        {"time": "2026-01-02T09:00:05.000", "event": "resume"},
    ]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    rec = {
        "attempts": [
            {"started": "2026-01-01T10:00:00", "status": "running",
             "hardware": {**HW, "torch_threads": 1}},
            {"started": "2026-01-02T09:00:00", "status": "done", "wall_s": 600.0,
             "hardware": {**HW, "torch_threads": 2}},
        ],
    }  # fmt: skip
    (path / "reproduce.json").write_text(json.dumps(rec))
    write_report(root, tables=[3])
    rows = {r["cell"]: r for r in read_csv(root / "table3.csv")}
    assert float(rows["cifar10-cnn"]["cpu_core_s"]) == 3000.0 + 2 * 600.0


def test_a_killed_sort_run_without_a_clock_counts_at_least_its_training_time(tmp_path):
    """Sort and median runs made before their metrics held ``wall_time_s``: their
    ``train_seconds`` bounds the compute from below when attempts left no time."""
    root = tmp_path / "results"
    metrics = {"test_exact": 0.8, "test_exact_by_n": {}, "train_seconds": 5400.0}
    path = fake_run(root, 1, "quality", "n5-deterministic", metrics=metrics)
    rec = {
        "attempts": [
            {"status": "running", "hardware": {**HW, "torch_threads": 1}},
            {"status": "done", "wall_s": 1800.0, "hardware": {**HW, "torch_threads": 1}},
        ],
    }
    (path / "reproduce.json").write_text(json.dumps(rec))
    write_report(root, tables=[1])
    rows = {r["cell"]: r for r in read_csv(root / "table1.csv")}
    assert float(rows["n5-deterministic"]["cpu_core_s"]) == 5400.0


def test_accuracy_vs_k_plot_takes_every_k_of_one_run(tmp_path):
    from neuralsort.experiments.tables.plots import plot_accuracy_vs_k
    from neuralsort.experiments.tables.runs import find_runs

    root = tmp_path / "results"
    by_k = {"1": 0.96, "3": 0.97, "5": 0.975}
    metrics = {"test_acc": 0.97, "k": 9, "test_acc_by_k": by_k}
    fake_run(root, 3, "cpu", "mnist-knn-ae", metrics=metrics)
    runs = find_runs(root, 3)
    target = tmp_path / "k.png"
    assert plot_accuracy_vs_k(runs, target) is None  # written: four values of k from one run
    assert target.read_bytes()[:4] == b"\x89PNG"
