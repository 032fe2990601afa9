"""End-to-end runs of `neuralsort sort` and `neuralsort quantile` on tiny synthetic MNIST."""

import json

import pytest
import torch
import yaml

from neuralsort.experiments.cli import build_parser, main
from neuralsort.experiments.config import resolve_config
from neuralsort.experiments.multidigit import quantile
from neuralsort.experiments.multidigit import sort as sorting
from neuralsort.experiments.multidigit.settings import validate_common

COMMANDS = {"sort": sorting, "quantile": quantile}

# tiny runs: 2-digit numbers of 8x8 "digits", a few steps, a few evaluation sequences
TINY = [
    "--digits", "2", "--num_epochs", "2", "--steps_per_epoch", "2", "--batch_size", "3",
    "--val_sequences", "6", "--test_sequences", "8", "--eval_batch_size", "4",
    "--num_samples", "2", "--lr", "1e-3", "--device", "cpu",
]  # fmt: skip


def run_cli(command, mnist_dir, out, *extra) -> int:
    return main([command, "--data_dir", str(mnist_dir), "--out", str(out), *TINY, *extra])


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("method", "regroup"), [("deterministic", "1"), ("vanilla", "3")])
def test_sort_end_to_end(mnist_dir, tmp_path, method, regroup):
    out = tmp_path / "run"
    args = ("--n", "3", "--method", method, "--regroup", regroup)
    assert run_cli("sort", mnist_dir, out, *args) == 0
    for name in ("config.yaml", "log.jsonl", "metrics.json", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_exact", "test_elementwise", "val_exact", "val_elementwise"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_exact"] <= metrics["test_elementwise"]
    assert metrics["epochs"] == 2 and metrics["steps"] == 4 and metrics["test_sequences"] == 8
    epochs = [r for r in read_log(out) if "epoch" in r and "event" not in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    # a vanilla sorter's net depends on n: tested at its own n only
    expected = ["3", "5", "7", "9", "15"] if method == "deterministic" else ["3"]
    assert list(metrics["test_by_n"]) == expected
    assert metrics["test_by_n"]["3"]["exact"] == metrics["test_exact"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["n"] == 3 and cfg["method"] == method and cfg["digits"] == 2
    assert cfg["regroup"] == int(regroup)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2


@pytest.mark.parametrize("method", ["deterministic", "constant"])
def test_quantile_end_to_end(mnist_dir, tmp_path, method):
    out = tmp_path / "run"
    assert run_cli("quantile", mnist_dir, out, "--n", "5", "--method", method) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_mse", "test_r2_corr", "test_r2", "val_mse"):
        assert isinstance(metrics[key], float)
    assert metrics["test_mse"] >= 0 and 0.0 <= metrics["test_r2_corr"] <= 1.0
    if method == "constant":
        assert metrics["test_r2_corr"] == 0.0
    assert list(metrics["test_by_n"]) == ["5", "9", "15"]  # Table 2's n
    assert metrics["test_by_n"]["5"]["mse"] == metrics["test_mse"]
    assert all(v["mse"] >= 0 for v in metrics["test_by_n"].values())


def test_every_n_uses_the_test_set_of_the_runs_trained_at_that_n(mnist_dir, tmp_path):
    # untrained (0 epochs), a NeuralSort sorter is the same net whatever n it was built for, so
    # run A's score on n = 5 must be what run B, at n = 5, reports on its own test set
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("sort", mnist_dir, a, "--n", "3", "--num_epochs", "0", "--eval-ns", "5,3") == 0
    assert run_cli("sort", mnist_dir, b, "--n", "5", "--num_epochs", "0", "--eval_ns", "none") == 0
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert list(ma["test_by_n"]) == ["3", "5"] and list(mb["test_by_n"]) == ["5"]
    assert ma["test_by_n"]["5"] == mb["test_by_n"]["5"]
    assert mb["test_by_n"]["5"]["exact"] == mb["test_exact"]
    assert ma["test_by_n"]["5"] != ma["test_by_n"]["3"]


def test_augment_shift_moves_the_training_images_only(mnist_dir, tmp_path):
    plain, moved = tmp_path / "plain", tmp_path / "moved"
    assert run_cli("sort", mnist_dir, plain, "--n", "3", "--num_epochs", "1") == 0
    args = ("--n", "3", "--num_epochs", "1", "--augment", "shift")
    assert run_cli("sort", mnist_dir, moved, *args) == 0
    assert yaml.safe_load((moved / "config.yaml").read_text())["augment"] == "shift"
    a = torch.load(plain / "last.pt", weights_only=True)["model"]
    b = torch.load(moved / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # the evaluation sets are the same: 0 epochs with and without it test the same untrained net
    zero = ("--n", "3", "--num_epochs", "0")
    assert run_cli("sort", mnist_dir, tmp_path / "z0", *zero) == 0
    assert run_cli("sort", mnist_dir, tmp_path / "z1", *zero, "--augment", "shift") == 0
    m0 = json.loads((tmp_path / "z0" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "z1" / "metrics.json").read_text())
    assert m0["test_by_n"] == m1["test_by_n"]


def test_regroup_ns_trains_on_several_lengths(mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli("sort", mnist_dir, out, "--n", "3", "--regroup-ns", "9,2,3", "--regroup", "2") == 0
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["regroup_ns"] == [2, 3, 9]
    assert run_cli("sort", mnist_dir, tmp_path / "plain", "--n", "3", "--regroup", "2") == 0
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(trained[k], plain[k]) for k in trained)


@pytest.mark.parametrize(
    ("command", "method", "extra"),
    [
        ("sort", "stochastic", ()),
        ("quantile", "sinkhorn", ()),
        ("sort", "stochastic", ("--augment", "shift")),
    ],
)
def test_resume_matches_an_uninterrupted_run(mnist_dir, tmp_path, command, method, extra):
    full, split = tmp_path / "full", tmp_path / "split"
    args = ("--n", "3", "--method", method, *extra)
    assert run_cli(command, mnist_dir, full, *args) == 0
    # the same run stopped after epoch 1, then continued with --resume
    assert run_cli(command, mnist_dir, split, *args, "--num_epochs", "1") == 0
    assert run_cli(command, mnist_dir, split, *args, "--resume") == 0
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((split / "metrics.json").read_text())
    test_keys = [k for k in ma if k.startswith(("test_", "val_"))]
    assert test_keys and all(ma[k] == mb[k] for k in test_keys)
    assert any(r.get("event") == "resume" for r in read_log(split))


def test_user_errors_exit_2_with_one_line(mnist_dir, tmp_path, capsys):
    assert run_cli("sort", mnist_dir, tmp_path / "a", "--n", "1") == 2
    assert "--n must be" in capsys.readouterr().err
    assert run_cli("quantile", mnist_dir, tmp_path / "b", "--tau", "0") == 2
    assert "--tau must be a positive number" in capsys.readouterr().err
    assert run_cli("sort", mnist_dir, tmp_path / "r", "--regroup", "0") == 2
    assert "--regroup must be an integer >= 1" in capsys.readouterr().err
    assert run_cli("sort", mnist_dir, tmp_path / "w", "--warmup_epochs", "-1") == 2
    assert "--warmup_epochs must be a number >= 0" in capsys.readouterr().err
    assert (
        run_cli("sort", mnist_dir, tmp_path / "s", "--method", "sinkhorn", "--regroup_ns", "3,5")
        == 2
    )
    assert "--regroup_ns needs a NeuralSort method" in capsys.readouterr().err
    assert run_cli("sort", mnist_dir, tmp_path / "p", "--n", "3", "--regroup_ns", "10") == 2
    assert "--regroup_ns lengths must be <= the items of a batch" in capsys.readouterr().err
    assert run_cli("quantile", mnist_dir, tmp_path / "e", "--eval_ns", "1,5") == 2
    assert "--eval_ns must be comma-separated integers >= 2" in capsys.readouterr().err
    assert run_cli("sort", mnist_dir, tmp_path / "n", "--regroup_near", "1.5") == 2
    assert "--regroup_near must be a fraction in [0, 1], got 1.5" in capsys.readouterr().err
    assert (
        run_cli("sort", mnist_dir, tmp_path / "v", "--method", "vanilla", "--regroup_near", "0.5")
        == 2
    )
    assert "--regroup_near needs a NeuralSort method" in capsys.readouterr().err
    assert run_cli("quantile", mnist_dir, tmp_path / "q", "--regroup_near", "0.5") == 2
    assert "--regroup_near applies to neuralsort sort only" in capsys.readouterr().err
    assert run_cli("sort", mnist_dir, tmp_path / "x", "--augment", "flipshift") == 2
    assert "--augment must be one of none, shift for sequences of digit images" in (
        capsys.readouterr().err
    )
    assert run_cli("sort", mnist_dir, tmp_path / "f", "--close_sequences", "1.5") == 2
    assert "--close_sequences must be a fraction in [0, 1]" in capsys.readouterr().err
    assert run_cli("quantile", mnist_dir, tmp_path / "g", "--close_spread", "1") == 2
    assert "--close_spread must be an integer in 2..10^digits" in capsys.readouterr().err
    args = ("--close_sequences", "0.5", "--close_spread", "1000", "--digits", "2")
    assert run_cli("sort", mnist_dir, tmp_path / "h", *args) == 2
    assert "--close_spread must be an integer in 2..10^digits = 100, got 1000" in (
        capsys.readouterr().err
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["sort", "--data_dir", str(empty), "--out", str(tmp_path / "c"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()  # no empty run folder left behind
    with pytest.raises(SystemExit) as exc:
        main(["quantile", "--method", "bogus"])
    assert exc.value.code == 2


def test_config_file_and_dashed_aliases(mnist_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("n: 4\nmethod: sinkhorn\ntau: 0.5\n")
    out = tmp_path / "run"
    assert (
        main(
            [
                "sort",
                "--config",
                str(cfg),
                "--data-dir",
                str(mnist_dir),
                "--out",
                str(out),
                *TINY,
                "--num-epochs",
                "1",
                "--tau",
                "2",
            ]
        )
        == 0
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["n"] == 4 and saved["method"] == "sinkhorn"  # from the file
    assert saved["tau"] == 2.0 and saved["num_epochs"] == 1  # flags win over the file


@pytest.mark.parametrize(
    "name", ["quality/sort-n3.yaml", "quality/sort-n5.yaml", "quality/quantile-n5.yaml"]
)
def test_shipped_configs_are_valid(name):
    command = "sort" if "sort" in name else "quantile"
    args = build_parser().parse_args([command, "--config", name])  # found in the package
    cfg = resolve_config(args, COMMANDS[command].DEFAULTS)
    validate_common(cfg)  # raises UserError on a bad value
    assert cfg["digits"] == 4 and cfg["steps_per_epoch"] * cfg["num_epochs"] >= 1000


def test_warmup_learning_rate(mnist_dir, tmp_path):
    out = tmp_path / "run"
    args = ("--n", "3", "--warmup_epochs", "2", "--lr_schedule", "cosine")
    assert run_cli("sort", mnist_dir, out, *args) == 0
    lrs = [r["lr"] for r in read_log(out) if "epoch" in r and "event" not in r]
    # 2 epochs x 2 steps, all 4 of them warm-up: lr (step + 1) / 4 after steps 2 and 4
    assert lrs == [pytest.approx(0.75e-3), pytest.approx(1e-3)]


def test_init_from_starts_from_an_earlier_run_and_counts_its_time(mnist_dir, tmp_path, capsys):
    first, warm, same = tmp_path / "first", tmp_path / "warm", tmp_path / "same"
    assert run_cli("sort", mnist_dir, first, "--n", "3") == 0
    # 0 epochs from first's best model: the same model, so the same test results at every n
    args = ("--n", "5", "--num_epochs", "0", "--eval_ns", "3,5")
    assert run_cli("sort", mnist_dir, warm, *args, "--init-from", str(first)) == 0
    assert run_cli("sort", mnist_dir, same, *args, "--init_from", str(first / "best.pt")) == 0
    mf = json.loads((first / "metrics.json").read_text())
    mw = json.loads((warm / "metrics.json").read_text())
    assert (
        mw["test_by_n"]["3"] == mf["test_by_n"]["3"]
        and mw["test_by_n"]["5"] == mf["test_by_n"]["5"]
    )
    assert mw["init_from"] == str(first / "best.pt")
    assert mw["init_train_seconds"] == pytest.approx(mf["train_seconds"])
    # a chain counts every link
    link, chained = tmp_path / "link", tmp_path / "chained"
    assert run_cli("sort", mnist_dir, link, "--n", "5", "--init_from", str(first)) == 0
    # a relative name not found from the working directory: a run folder beside this one
    assert run_cli("sort", mnist_dir, chained, *args, "--init_from", "link") == 0
    ml = json.loads((link / "metrics.json").read_text())
    mc = json.loads((chained / "metrics.json").read_text())
    assert mc["init_train_seconds"] == pytest.approx(mf["train_seconds"] + ml["train_seconds"])
    assert mc["init_from"] == str(link / "best.pt")
    capsys.readouterr()
    assert run_cli("sort", mnist_dir, tmp_path / "x", "--init_from", str(tmp_path / "nope")) == 2
    assert "--init_from" in capsys.readouterr().err
    bad = ("--n", "3", "--method", "vanilla", "--init_from", str(first))
    assert run_cli("sort", mnist_dir, tmp_path / "y", *bad) == 2
    assert "do not fit this method" in capsys.readouterr().err
