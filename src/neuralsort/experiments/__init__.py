"""The paper's experiments, built on the public ``neuralsort`` API like any user code."""
