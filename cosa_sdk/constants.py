"""Values several layers must agree on, defined once. Standard library only, so every layer may import it."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Multi-scale test-time augmentation of the released evaluation, in its order (the first scale sets the size).
TTA_SCALES = (1.0, 0.5, 1.5, 0.75, 1.25)

# Image files we read, in datasets, folders given to `cosa segment`, and imports.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)

# The two networks of a run: the online network (student) and the EMA assignment network (teacher).
NETWORK_NAMES = {"online": "online", "student": "online", "assignment": "assignment", "teacher": "assignment"}

# `cosa serve --max-latency-ms` and COSA_MAX_LATENCY_MS: a burst of 50 uploads fits on 2 CPU cores.
DEFAULT_MAX_LATENCY_MS = 20_000

# `cosa demo --budget`: minutes the whole demo may take; its training schedule is sized to fit.
DEMO_BUDGET_MIN = 10.0
