"""CoSA co-training: network, pseudo-labels, losses, datasets, engine and evaluation (needs torch)."""
