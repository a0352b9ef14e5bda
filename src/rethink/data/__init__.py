"""Datasets: the :class:`Dataset` container and the registry that loads them by name."""

from rethink.data.dataset import Dataset
from rethink.data.sources import dataset_names, load_dataset, subset

__all__ = ["Dataset", "load_dataset", "dataset_names", "subset"]
