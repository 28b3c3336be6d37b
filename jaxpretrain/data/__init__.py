"""Datasets (a TFDS catalogue with local builders) and grain input pipelines."""

from jaxpretrain.data import augment
from jaxpretrain.data import text, tokenizers
from jaxpretrain.data.catalogue import (
    data_source,
    dataset_info,
    in_memory_source,
    names,
    prepared_builder,
    resolve_data_dir,
)
from jaxpretrain.data.errors import DatasetNotFoundError, UnknownDatasetError
from jaxpretrain.data.fashion_mnist import JaxpretrainFashionMnist
from jaxpretrain.data.pipeline import (
    DEFAULT_READ_OPTIONS,
    Batch,
    eval_batches,
    load_split,
    preprocess,
    train_loader,
)
from jaxpretrain.data.sources import (UNLABELLED, InMemory, Source, in_memory, labelled_subset,
                                      mixed, read_all, read_batch, subset, without)
