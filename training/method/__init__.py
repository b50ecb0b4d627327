"""The CoSA method: what the online network learns from a batch.

Pseudo-labels, losses, the three techniques (perplexity weights, dynamic threshold, contrastive
separation), the dense-CRF loss and the EMA assignment network.
"""
