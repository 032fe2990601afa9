"""``neuralsort dknn`` (Table 3): the command and its flags in :mod:`.command`, the training task in
:mod:`.task`."""
