"""Scoring and looking at a trained network: mIoU metrics, CRF post-processing, training pictures."""
