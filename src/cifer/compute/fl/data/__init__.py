"""Client data for federated learning: dataset loaders and partitioners.

Loading (:mod:`.datasets`):

* :func:`load_dataset` ``(name, *, data_dir=None, download=False, subset=None)`` returns
  ``(train, test)`` :class:`ArrayDataset` s (float32 ``x``, int64 ``y``) for the names in
  :data:`DATASETS`: ``digits`` and ``breast_cancer`` (bundled with scikit-learn, offline),
  ``mnist``, ``fashion_mnist`` and ``cifar10`` (official files under ``$CIFER_DATA_DIR``,
  MD5-checked, or downloaded with ``download=True``).
* :func:`read_idx`, :func:`read_cifar_batch` parse single files; :class:`RestrictedUnpickler`
  is the pickle loader that only builds numpy arrays.
* Errors: :class:`DatasetError`, :class:`DatasetNotFoundError` (files absent),
  :class:`ChecksumError` (MD5 differs from the published one).

Partitioning (:mod:`.partition`):

* :func:`partition` ``(labels, n_clients, spec, seed)`` returns one index array per client
  for the specs ``iid``, ``dirichlet:ALPHA``, ``sorted`` / ``shards:S``
  (:func:`parse_partition_spec`); :func:`client_slice` parses a client's ``i/n``.
"""

from cifer.compute.fl.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    OFFLINE_DATASETS,
    ArrayDataset,
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    RestrictedUnpickler,
    dataset_names,
    default_data_dir,
    load_dataset,
    read_cifar_batch,
    read_idx,
    resolve_data_dir,
)
from cifer.compute.fl.data.partition import (
    PARTITION_SPECS,
    PartitionError,
    PartitionSpec,
    client_slice,
    parse_partition_spec,
    partition,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "OFFLINE_DATASETS",
    "PARTITION_SPECS",
    "ArrayDataset",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "PartitionError",
    "PartitionSpec",
    "RestrictedUnpickler",
    "client_slice",
    "dataset_names",
    "default_data_dir",
    "load_dataset",
    "parse_partition_spec",
    "partition",
    "read_cifar_batch",
    "read_idx",
    "resolve_data_dir",
]
