"""``neuralsort baseline`` (Table 3's baselines): the command and its flags in :mod:`.command`, the
training task of the networks in :mod:`.task`, PCA and the autoencoder in :mod:`.methods`."""
