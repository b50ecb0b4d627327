"""Dataset readers, one module per format: VOC, COCO, the custom folder format and the synthetic benchmark."""
