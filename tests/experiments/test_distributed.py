"""Multi-process training (gloo, 2 CPU processes), mixed precision and the --threads flag.

The 2-process runs start fresh processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), once for a batch of tiny CLI runs, so the whole file takes seconds of
work plus the start-up of a few Python processes. Every spawn and subprocess has a timeout.

Why a 2-process run with half the per-process batch must match a 1-process run (up to float
rounding, not just "within noise"): both draw the same shuffles from the same seed, each rank takes
a disjoint half of every global batch, the kNN neighbours are gathered across ranks and DDP averages
the gradients, so every step computes the same loss and gradient; only the order of float32
additions differs (relative 1e-7 per step), which a few Adam steps amplify to at most ~1e-4.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from neuralsort.experiments import distributed
from neuralsort.experiments.cli import build_parser, main
from neuralsort.experiments.config import UserError, resolve_config
from neuralsort.experiments.recipe import Amp, restore_generator
from neuralsort.experiments.run_folder import Run

SPAWN_TIMEOUT_S = 240.0

DKNN = [
    "dknn", "--dataset", "digits", "--num_epochs", "2", "--steps_per_epoch", "4", "--k", "3",
    "--eval_batch", "500", "--seed", "1", "--device", "cpu",
]  # fmt: skip
SORT = [
    "--digits", "2", "--num_epochs", "2", "--steps_per_epoch", "2", "--val_sequences", "6",
    "--test_sequences", "8", "--eval_batch_size", "4", "--num_samples", "2", "--lr", "1e-3",
    "--device", "cpu", "--n", "3",
]  # fmt: skip
RUN_FILES = {"config.yaml", "log.jsonl", "last.pt", "best.pt", "metrics.json"}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _join_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for each worker, with progress bars off and one thread."""
    os.environ.update(
        {**distributed.local_launch_env(rank, world, port), "NEURALSORT_PROGRESS": "0"}
    )
    torch.set_num_threads(1)


def _spawn(fn, *args, nprocs: int = 2) -> None:
    """Run ``fn(rank, nprocs, port, *args)`` in ``nprocs`` fresh processes; fail on timeout."""
    ctx = mp.spawn(fn, args=(nprocs, distributed.free_port(), *args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=0.5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"{fn.__name__} on {nprocs} processes timed out after {SPAWN_TIMEOUT_S}s")


def _worker(rank: int, world: int, port: int, runs: list[list[str]], step_dir: str) -> None:
    """One process of the spawned pair: the one-step check, then the CLI runs in order."""
    _join_env(rank, world, port)
    _step_check(rank, step_dir)
    for argv in runs:
        rc = main(argv)
        if rc != 0:
            raise RuntimeError(f"rank {rank}: {' '.join(argv)} exited {rc}")
    distributed.shutdown()  # what the script does after a command succeeded
    if torch.distributed.is_initialized():
        raise RuntimeError(f"rank {rank}: the process group outlived shutdown()")


def _write_idx(path, array: torch.Tensor) -> None:
    a = array.to(torch.uint8).contiguous()
    header = struct.pack(">I", 0x0800 | a.dim()) + struct.pack(">" + "I" * a.dim(), *a.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(a.flatten().tolist()))


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _epochs(out) -> list[dict]:
    return [r for r in _log(out) if "epoch" in r and "event" not in r]


def _metrics(out) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    drop = ("time", "_s", "seconds", "steps_per_second")
    strip = {k: v for k, v in m.items() if not k.endswith(drop)}
    if "history" in strip:
        strip["history"] = [
            {k: v for k, v in r.items() if not k.endswith(drop)} for r in strip["history"]
        ]
    return strip


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """60 training and 30 test 8x8 'digit' images in IDX files (as in test_sorting_cli)."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    g = torch.Generator().manual_seed(0)
    for stem, num in (("train", 60), ("t10k", 30)):
        labels = torch.arange(num) % 10
        images = torch.randint(0, 60, (num, 8, 8), generator=g)
        images[torch.arange(num), (labels * 8) // 10, :] = 255
        _write_idx(root / "mnist" / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(root / "mnist" / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """Tiny runs on 2 processes (one spawn for all) and their 1-process counterparts."""
    root = tmp_path_factory.mktemp("dist")
    data = ["--data_dir", str(mnist_dir)]
    half_dknn = ["--num_train_queries", "10", "--num_train_neighbors", "15"]
    stoch = ["--method", "stochastic", "--num_samples", "2"]
    two = [
        [*DKNN, *half_dknn, "--out", str(root / "dknn2")],
        [*DKNN, *half_dknn, *stoch, "--out", str(root / "dknn2-full")],
        [*DKNN, *half_dknn, *stoch, "--out", str(root / "dknn2-split"), "--stop_after_steps", "6"],
        ["dknn", "--resume", "--out", str(root / "dknn2-split"), "--device", "cpu"],
        ["sort", *SORT, *data, "--batch_size", "2", "--out", str(root / "sort2")],
        ["sort", *SORT, *data, *stoch, "--batch_size", "2", "--out", str(root / "sort2-full")],
        ["sort", *SORT, *data, *stoch, "--batch_size", "2", "--out", str(root / "sort2-split"),
         "--num_epochs", "1"],
        ["sort", *SORT, *data, *stoch, "--batch_size", "2", "--out", str(root / "sort2-split"),
         "--resume"],
        ["quantile", *SORT, *data, "--method", "constant", "--batch_size", "2",
         "--out", str(root / "constant2")],
        ["baseline", "--dataset", "digits", "--num_epochs", "1", "--steps_per_epoch", "3",
         "--batch_size", "16", "--device", "cpu", "--out", str(root / "cnn2")],
    ]  # fmt: skip
    step_dir = root / "step"
    step_dir.mkdir()
    _spawn(_worker, two, str(step_dir))
    os.environ["NEURALSORT_PROGRESS"] = "0"
    one = [
        [*DKNN, "--num_train_queries", "20", "--num_train_neighbors", "30",
         "--out", str(root / "dknn1")],
        ["sort", *SORT, *data, "--batch_size", "4", "--out", str(root / "sort1")],
        ["quantile", *SORT, *data, "--method", "constant", "--batch_size", "4",
         "--out", str(root / "constant1")],
        ["baseline", "--dataset", "digits", "--num_epochs", "1", "--steps_per_epoch", "3",
         "--batch_size", "32", "--device", "cpu", "--out", str(root / "cnn1")],
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        for argv in one:
            assert main(argv) == 0, argv
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "step": step_dir}


# ------------------------------------------------------------------------------------------------
# 2 processes: outputs, equivalence with 1 process, resume
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dknn2", "sort2", "constant2", "cnn2"])
def test_two_processes_finish_and_only_rank0_writes(runs, name):
    out = runs["root"] / name
    files = {p.name for p in out.iterdir()}
    assert RUN_FILES <= files, files
    assert not [f for f in files if f.endswith(".tmp")]  # no half-written files
    log = _log(out)
    # one writer: a single start event and one line per epoch (two writers would double them)
    assert [r["event"] for r in log if r.get("event") == "start"] == ["start"]
    epochs = [r["epoch"] for r in _epochs(out)]
    assert epochs == sorted(set(epochs)) and epochs[0] == 1
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["_run"]["world_size"] == 2
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2


def test_dknn_two_processes_half_batch_match_one_process(runs):
    one, two = runs["root"] / "dknn1", runs["root"] / "dknn2"
    m1, m2 = _metrics(one), _metrics(two)
    assert m1["test_acc"] == m2["test_acc"] and m1["val_acc"] == m2["val_acc"]
    for a, b in zip(m1["history"], m2["history"], strict=True):
        assert a["train_topk_correct"] == pytest.approx(b["train_topk_correct"], abs=1e-4)
    w1 = torch.load(one / "last.pt", weights_only=True)["model"]
    w2 = torch.load(two / "last.pt", weights_only=True)["model"]
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-4, rtol=1e-3)


def test_dknn_ranks_draw_different_slices(runs):
    state = torch.load(runs["root"] / "dknn2-split" / "last.pt", weights_only=True)
    # the private noise streams differ between ranks (rank 0 keeps the single-process seed)
    assert not torch.equal(state["ranks"][0]["noise"], state["ranks"][1]["noise"])
    assert torch.equal(state["ranks"][0]["noise"], state["noise_rng"])


@pytest.mark.parametrize(("one", "two"), [("sort1", "sort2"), ("constant1", "constant2")])
def test_multidigit_two_processes_half_batch_match_one_process(runs, one, two):
    e1, e2 = _epochs(runs["root"] / one), _epochs(runs["root"] / two)
    assert len(e1) == len(e2) == 2
    for a, b in zip(e1, e2, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        for key in a:
            if key.startswith("val_"):
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key
    m1, m2 = _metrics(runs["root"] / one), _metrics(runs["root"] / two)
    for key in m1:
        if key == "test_by_n":  # the same model tested at every n: per n, the same metrics
            assert list(m1[key]) == list(m2[key])
            for n, values in m1[key].items():
                assert values == pytest.approx(m2[key][n], rel=1e-3, abs=1e-6), (key, n)
        elif key.startswith("test_") and key != "test_sequences":
            assert m1[key] == pytest.approx(m2[key], rel=1e-3, abs=1e-6), key


def test_baseline_two_processes_match_one_process(runs):
    e1, e2 = _epochs(runs["root"] / "cnn1"), _epochs(runs["root"] / "cnn2")
    assert e1[0]["train_loss"] == pytest.approx(e2[0]["train_loss"], rel=1e-4)
    assert e1[0]["train_acc"] == pytest.approx(e2[0]["train_acc"], abs=1.5 / 96)  # <= 1 flip


@pytest.mark.parametrize("name", ["dknn2", "sort2"])
def test_resume_on_two_processes_equals_uninterrupted(runs, name):
    full, split = runs["root"] / f"{name}-full", runs["root"] / f"{name}-split"
    assert any(r.get("event") == "resume" for r in _log(split))
    assert _metrics(full) == _metrics(split)
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_resume_with_another_process_count_is_a_user_error(runs, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(runs["root"] / "dknn2-split", out)
    assert main(["dknn", "--resume", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "2 process(es)" in err and "same number" in err


# ------------------------------------------------------------------------------------------------
# 2 processes: one DDP step with gathered neighbours is one step on the whole batch
# ------------------------------------------------------------------------------------------------


def _step_check(rank: int, out_dir: str) -> None:
    """On each rank: one DDP step on half the batch, one plain step on all of it; save diffs."""
    from neuralsort.experiments.dknn.task import step_loss
    from neuralsort.experiments.embedding_nets import create_model
    from neuralsort.experiments.multidigit.sorters import build_sort_method
    from neuralsort.experiments.multidigit.task import loss_module
    from neuralsort.knn import dknn_loss

    ctx = distributed.setup("cpu")
    if (ctx.world_size, ctx.rank, ctx.is_main) != (2, rank, rank == 0):
        raise RuntimeError(f"setup gave {ctx} on rank {rank}")
    amp = Amp("off", ctx.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * (3 + 5), 1, 8, 8, generator=g)  # two ranks x (3 queries + 5 neighbours)
    y = torch.randint(0, 3, (16,), generator=g)
    cfg = {"k": 3, "tau": 1.0, "method": "deterministic", "num_samples": 1}
    q_all, n_all = torch.arange(0, 6), torch.arange(6, 16)  # queries, neighbours (rank order)
    qi, ni = q_all[3 * rank : 3 * rank + 3], n_all[5 * rank : 5 * rank + 5]
    diffs = {}

    def dknn_step_diff(local_x, query_y, neighbor_y, step_cfg, reference_loss) -> float:
        """One DDP step of ``step_loss`` on this rank's images against one plain step of
        ``reference_loss(embed)`` on all of them: the largest parameter difference after."""
        torch.manual_seed(1)
        model = create_model("digits-net", 1, image_size=(8, 8))
        torch.manual_seed(1)
        reference = create_model("digits-net", 1, image_size=(8, 8))
        net = distributed.wrap_ddp(model, ctx.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = step_loss(net, local_x, 3, query_y, neighbor_y, step_cfg, amp, None, rank=rank)
        amp.backward_step(loss, opt)
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
        reference_loss(reference).backward()
        ref_opt.step()
        return max(
            (a - b).abs().max().item()
            for a, b in zip(model.parameters(), reference.parameters(), strict=True)
        )

    def split_reference(net):
        e = net(torch.cat([x[q_all], x[n_all]]))
        return dknn_loss(e[:6], e[6:], y[q_all], y[n_all], 3, tau=1.0)

    diffs["dknn"] = dknn_step_diff(torch.cat([x[qi], x[ni]]), y[qi], y[n_all], cfg, split_reference)
    # --all_queries: each rank's 8 images are queries against all 16 but themselves
    order = torch.cat([q_all[:3], n_all[:5], q_all[3:], n_all[5:]])  # rank 0's, then rank 1's

    def all_queries_reference(net):
        e = net(x[order])
        others = ~torch.eye(16, dtype=torch.bool)
        return dknn_loss(e, e, y[order], y[order], 3, tau=1.0, mask=others)

    mine = torch.cat([qi, ni])
    diffs["dknn_all_queries"] = dknn_step_diff(
        x[mine], y[mine], y[order], {**cfg, "all_queries": True}, all_queries_reference
    )

    torch.manual_seed(2)
    sorter = build_sort_method("deterministic", n=3, image_shape=(8, 8), tau=1.0)
    torch.manual_seed(2)
    ref_sorter = build_sort_method("deterministic", n=3, image_shape=(8, 8), tau=1.0)
    images = torch.rand(4, 3, 1, 8, 8, generator=g)
    values = torch.randint(0, 100, (4, 3), generator=g)
    mine = slice(2 * rank, 2 * rank + 2)
    opt = torch.optim.SGD(sorter.parameters(), lr=0.5)
    sort_loss = loss_module(sorter, ctx.device)  # keep the DDP wrapper alive for backward
    amp.backward_step(sort_loss(images[mine], values[mine]), opt)
    ref_opt = torch.optim.SGD(ref_sorter.parameters(), lr=0.5)
    ref_sorter.loss(images, values).backward()
    ref_opt.step()
    diffs["sort"] = max(
        (a - b).abs().max().item()
        for a, b in zip(sorter.parameters(), ref_sorter.parameters(), strict=True)
    )
    diffs["reduce_mean"] = distributed.reduce_mean([float(rank)])[0]
    diffs["gathered"] = distributed.all_gather_objects(rank)

    # a Run object on rank 1 writes nothing
    folder = os.path.join(out_dir, f"rank{rank}")
    os.makedirs(folder, exist_ok=True)
    run = Run(pathlib.Path(folder), {}, resumed=False)
    run.log({"x": 1})
    run.save_checkpoint({"x": torch.zeros(1)}, is_best=True)
    run.write_metrics({"x": 1})
    run.plot_history([{"epoch": 1, "x": 1.0}], ["x"], "x.png")
    with open(os.path.join(out_dir, f"diffs{rank}.json"), "w") as f:
        json.dump(diffs, f)


def test_one_ddp_step_equals_one_step_on_the_whole_batch(runs):
    folder = runs["step"]
    for rank in (0, 1):
        diffs = json.loads((folder / f"diffs{rank}.json").read_text())
        assert diffs["dknn"] < 1e-6 and diffs["sort"] < 1e-6, diffs
        assert diffs["dknn_all_queries"] < 1e-6, diffs
        assert diffs["reduce_mean"] == 0.5 and diffs["gathered"] == [0, 1]
    assert {p.name for p in (folder / "rank0").iterdir()} >= {"log.jsonl", "last.pt", "x.png"}
    assert list((folder / "rank1").iterdir()) == []  # a Run on rank 1 writes nothing


# ------------------------------------------------------------------------------------------------
# the real launcher
# ------------------------------------------------------------------------------------------------


def test_torchrun_runs_the_cli_unchanged(tmp_path, mnist_dir):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "neuralsort.experiments.cli",
        "--",  # torchrun's parser would take the sort command's --n for an abbreviation
        "sort", *SORT, "--num_epochs", "1", "--data_dir", str(mnist_dir), "--batch_size", "2",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURALSORT_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test exact") == 1  # printed by rank 0 only
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


# ------------------------------------------------------------------------------------------------
# one process: helpers, --threads, --amp
# ------------------------------------------------------------------------------------------------


def test_single_process_helpers_are_identities(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    x = torch.randn(3, 2)
    assert distributed.all_gather_with_grad(x) is x
    assert distributed.reduce_sum([1.5, 2]) == [1.5, 2.0]
    assert distributed.reduce_mean([3.0]) == [3.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_objects(7) == [7]
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(module, ctx.device) is module
    assert distributed.unwrap(module) is module
    distributed.barrier()
    assert distributed.rank_seed(5, 0) == 5
    seeds = {distributed.rank_seed(5, r) for r in range(1, 5)}
    assert len(seeds) == 4 and 5 not in seeds and all(0 <= s < 2**63 for s in seeds)


def test_setup_without_torchrun_variables_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UserError, match="torchrun"):
        distributed.setup("cpu")
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup("cpu").rank == 0  # RANK alone does not make a second process


def test_threads_flag_and_its_old_spelling(tmp_path):
    parser = build_parser()
    for command in ("dknn", "baseline", "sort", "quantile"):
        assert parser.parse_args([command, "--threads", "3"]).threads == 3
        assert parser.parse_args([command, "--num_threads", "2"]).threads == 2
        assert parser.parse_args([command, "--num-threads", "1"]).threads == 1
        assert parser.parse_args([command, "--amp", "bf16"]).amp == "bf16"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("num_threads: 2\n")  # configs written before the rename still work
    cfg = resolve_config(parser.parse_args(["sort", "--config", str(cfg_file)]), {})
    assert cfg["threads"] == 2 and "num_threads" not in cfg and cfg["amp"] == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["sort", "--amp", "fp8"])


def test_amp_modes():
    cpu = torch.device("cpu")
    off = Amp("off", cpu)
    assert not off.enabled and off.state_dict() == {}
    a = torch.randn(4, 4)
    with Amp("bf16", cpu).autocast():
        assert (a @ a).dtype == torch.bfloat16
    with off.autocast():
        assert (a @ a).dtype == torch.float32
    fp16 = Amp("fp16", cpu)
    assert fp16.scaler.is_enabled()
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    fp16.backward_step((w * 2).sum(), opt)
    assert torch.allclose(w.detach(), torch.full((2,), 0.8))  # the scale is divided out
    assert fp16.state_dict()["scale"] > 0
    with pytest.raises(UserError, match="--amp"):
        Amp("fp8", cpu)


def test_restore_generator_across_device_types(capsys):
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    expected = torch.rand(2, generator=g)
    assert restore_generator(g, state, fallback_seed=9, what="noise")
    assert torch.equal(torch.rand(2, generator=g), expected)
    philox = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    assert not restore_generator(g, philox, fallback_seed=9, what="noise")
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=torch.manual_seed(9)))
    assert "does not fit this device" in capsys.readouterr().err


@pytest.mark.parametrize("amp", ["bf16"])  # fp16 (slow on CPUs): see the sort test below
def test_dknn_with_amp(tmp_path, amp, monkeypatch):
    monkeypatch.setenv("NEURALSORT_PROGRESS", "0")
    out = tmp_path / "run"
    argv = [*DKNN, "--num_epochs", "1", "--steps_per_epoch", "2", "--num_train_queries", "16"]
    assert main([*argv, "--num_train_neighbors", "16", "--amp", amp, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["amp"] == amp and 0.5 < m["test_acc"] <= 1.0
    state = torch.load(out / "last.pt", weights_only=True)
    assert ("scale" in state["amp"]) == (amp == "fp16")


def test_sort_fp16_resume_equals_uninterrupted(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv("NEURALSORT_PROGRESS", "0")
    common = ["sort", *SORT, "--data_dir", str(mnist_dir), "--batch_size", "3", "--amp", "fp16"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main([*common, "--out", str(full)]) == 0
    assert main([*common, "--out", str(split), "--num_epochs", "1"]) == 0
    assert main([*common, "--out", str(split), "--resume"]) == 0
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["amp"] == b["amp"] and a["amp"]["scale"] > 0
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert _metrics(full) == _metrics(split)


def _rank0_fails(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank 0's validation raises: every rank must stop with an error, none may hang."""
    _join_env(rank, world, port)
    distributed.setup("cpu")

    def validate() -> dict:
        raise ValueError("disk full")

    try:
        distributed.from_rank0(validate)
    except (UserError, ValueError) as exc:
        pathlib.Path(out_dir, f"rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    assert distributed.from_rank0(lambda: {"val_acc": 0.5}) == {"val_acc": 0.5}
    distributed.shutdown()


def test_an_error_on_rank0_reaches_every_rank(tmp_path):
    _spawn(_rank0_fails, str(tmp_path))
    assert (tmp_path / "rank0.txt").read_text() == "ValueError: disk full"
    assert (tmp_path / "rank1.txt").read_text() == (
        "UserError: rank 0 failed: ValueError('disk full')"
    )
