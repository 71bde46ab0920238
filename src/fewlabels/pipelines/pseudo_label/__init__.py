"""Teacher pseudo-labels for an unlabeled pool of any size, and Noisy Student's filtering and class balancing.

`pseudo_label` runs a finished run's model (the teacher) over a pool, in eval mode (no dropout or stochastic
depth, BatchNorm running statistics) on un-augmented inputs, as Noisy Student prescribes: the teacher is not
noised. The pool is streamed from an `ItemSource` (an in-memory tensor, a memory-mapped `.npy` file, an image
folder or CSV manifest, or a built-in dataset) in shards of `shard_size` consecutive items; each finished shard is
one safetensors file written atomically, so an interrupted job restarts where it stopped, and memory never holds
more than one shard's outputs and one batch of inputs, whatever the pool size.

Output folder::

    manifest.json            format, teacher (run, weights sha256, preprocessing), data, settings, shard count
    files.txt                for image files: the file of each row, one absolute path a line
    shard-00000.safetensors  index (int64 rows of the source), topk_probs (float32 n x k, descending),
    shard-00001.safetensors  topk_classes (int64 n x k), rest_mass (float32 n), probs (n x C, with full=True)
    ...

Under torchrun every rank takes whole shards (rank r: shards r, r + W, r + 2W, ...). `PseudoLabels` reads a
finished folder and `select` applies Noisy Student's filtering (max probability >= 0.3) and per-class balancing
(keep the most confident N per class, duplicate under-filled classes with stochastic rounding), streaming over
the shards.

Modules: `sources` (ItemSource and its kinds, `open_source`), `labels` (the folder format, `PseudoLabels`),
`shards` (`pseudo_label`, `write_probs`: writing folders, torchrun), `selection` (`select`, `Selection`),
`__main__` (`python -m fewlabels.pipelines.pseudo_label`).
"""

# `X as X`: the on-disk format's constants stay importable from here (as before the split), outside `*`.
from fewlabels.pipelines.pseudo_label.labels import FILES as FILES
from fewlabels.pipelines.pseudo_label.labels import FORMAT as FORMAT
from fewlabels.pipelines.pseudo_label.labels import FORMAT_VERSION as FORMAT_VERSION
from fewlabels.pipelines.pseudo_label.labels import MANIFEST as MANIFEST
from fewlabels.pipelines.pseudo_label.labels import SHARD_KEYS as SHARD_KEYS
from fewlabels.pipelines.pseudo_label.labels import PseudoLabels, shard_name
from fewlabels.pipelines.pseudo_label.selection import SELECTION_FORMAT as SELECTION_FORMAT
from fewlabels.pipelines.pseudo_label.selection import Selection, select
from fewlabels.pipelines.pseudo_label.shards import pseudo_label, write_probs
from fewlabels.pipelines.pseudo_label.sources import ArraySource, ImageFileSource, ItemSource, NpySource, open_source

__all__ = [
    "ArraySource",
    "ImageFileSource",
    "ItemSource",
    "NpySource",
    "PseudoLabels",
    "Selection",
    "open_source",
    "pseudo_label",
    "select",
    "shard_name",
    "write_probs",
]
