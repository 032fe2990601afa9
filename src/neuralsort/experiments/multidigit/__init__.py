"""The multi-digit MNIST experiments (Tables 1 and 2): the commands ``neuralsort sort``
(:mod:`.sort`) and ``neuralsort quantile`` (:mod:`.quantile`), their shared settings
(:mod:`.settings`) and training task (:mod:`.task`), the per-image net and shared pieces
(:mod:`.models`) and the methods (:mod:`.sorters`, :mod:`.medians`)."""
