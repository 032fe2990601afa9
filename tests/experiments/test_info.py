"""``neuralsort info``."""

from neuralsort.experiments.cli import main


def test_info_reports_versions_and_the_native_operator(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("neuralsort ")
    assert "torch " in out
    assert "\ncpu " in out and "logical cores" in out  # the CPU model, for every measurement
    assert "native CPU operator:" in out
    assert "Triton kernels for CUDA (experimental): off" in out
