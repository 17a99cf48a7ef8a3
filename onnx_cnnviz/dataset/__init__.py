"""Explanations (and metrics) over a whole dataset on Ray Data: the optional ``ray`` extra.

    from onnx_cnnviz import dataset

    summary = dataset.explain("model.onnx", ["s3://bucket/photos/"], "out/", methods=["gradcam", "saliency"],
                              metrics=["deletion"], address="auto")
    import pandas as pd; pd.read_parquet("out/records.parquet")      # one row per image x method x class

The pipeline (:mod:`.pipeline`): the driver lists the images (local files, folders, globs, or URIs of any filesystem
pyarrow reads: ``s3://``, ``gs://``, ``hdfs://``, ``file://``) and plans what is left to do exactly as ``cnnviz
explain`` does (its JSON records decide what ``resume`` skips); Ray tasks read and preprocess the pictures
(:mod:`.sources`); a pool of actors (:mod:`.actor`), each loading the ONNX model once and keeping its onnxruntime
sessions, explains them and writes the maps with ``cnnviz explain``'s own writer, plus one Parquet part per batch of
the records table (:mod:`.records`). The driver only receives the small record rows, one batch at a time.
``cnnviz evaluate --ray`` runs its metrics through the same pipeline (:func:`.pipeline.evaluate_on_ray`): the actors
compute evaluate's journal rows and the driver alone writes them.

Ray is imported only here, never by the core: ``import onnx_cnnviz`` and ``cnnviz explain`` without ``--ray`` leave
it out (``tests/dataset`` checks it).
"""
from __future__ import annotations

from ..errors import MissingDependencyError

#: pip extra that brings Ray Data (the version this package was tested with).
RAY_EXTRA = "ray[data]==2.60.0"


def require_ray():
    """The ``ray`` module, or :class:`MissingDependencyError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its data extra lacks pyarrow/pandas glue)
    except ImportError as exc:
        raise MissingDependencyError(f"the Ray pipeline needs Ray Data ({exc}); install it with "
                                     f"pip install 'onnx-cnnviz[ray]' (or pip install '{RAY_EXTRA}').") from None
    return ray


def explain(*args, **kwargs):
    """See :func:`onnx_cnnviz.dataset.pipeline.explain`."""
    from .pipeline import explain as _explain

    return _explain(*args, **kwargs)


__all__ = ["explain", "require_ray", "RAY_EXTRA"]
