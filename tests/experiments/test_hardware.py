"""What a run runs on, in words."""

import torch

from neuralsort.experiments import hardware
from neuralsort.experiments.tables.runs import _config_device


def test_cpu_run_summary_names_the_cpu_model_and_threads(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_model", lambda: "Test EPYC 9000")
    info = hardware.hardware_info("cpu")
    assert info["device"] == "cpu" and info["cpu"] == "Test EPYC 9000"
    t = torch.get_num_threads()
    assert info["summary"] == f"CPU Test EPYC 9000, {t} thread{'s' if t != 1 else ''}"


def test_cpu_model_reads_a_name_and_gpu_name_follows_cuda():
    assert hardware.cpu_model().strip()
    assert (hardware.gpu_name() is None) == (not torch.cuda.is_available())


def test_a_run_made_outside_reproduce_is_named_by_what_its_config_recorded():
    cuda = {"device": "cuda", "_run": {"gpu": "Test H100", "cpu": "Test EPYC"}}
    assert _config_device({}, cuda)[:2] == ("GPU Test H100", 0)
    cpu = {"device": "cpu", "threads": 4, "_run": {"cpu": "Test EPYC"}}
    assert _config_device({}, cpu)[:2] == ("CPU Test EPYC", 4)
    # an older run without the model names keeps the device alone
    assert _config_device({"device": "cpu"}, {"threads": 1})[:2] == ("cpu", 1)
