"""Datasets: VOC, COCO, custom weakly labelled folders and the embedded synthetic benchmark."""
