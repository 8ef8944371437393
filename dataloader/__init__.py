"""FER2013 data: the h5 reader, the prepare command, in-memory batches, splits and synthetic files."""
from dataloader.fer2013 import CLASSES, DEFAULT_PATH, SPLITS, DatasetError, Split, exact_duplicates, load_fer2013

__all__ = ["CLASSES", "DEFAULT_PATH", "SPLITS", "DatasetError", "Split", "exact_duplicates", "load_fer2013"]
