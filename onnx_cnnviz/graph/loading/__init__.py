"""Loading as named passes: each a small function in its own module that returns what it changed
(:class:`~.record.PassRecord`); ``Model`` collects them in ``Model.load_passes`` and ``cnnviz inspect`` lists them.

In the order they run:

1. ``read`` (:mod:`.read`): the file, its bytes or a ModelProto read under limits (nodes, tensor sizes, text,
   external data), never modified;
2. ``hold`` (:mod:`.read`, with graph/held.py): a model of 256 MiB of weights or more keeps them beside the graph;
3. ``order``, ``constants``, ``ifs``, ``opset``, ``float32`` (:mod:`.normalise`): the normal form;
4. ``inputs``, ``score``, ``layout`` (:mod:`.choices`, recording graph/structure.py, graph/head.py and
   graph/layout.py): inputs the score does not need dropped, the score tensor chosen, the image input made float
   NCHW;
5. ``batch`` (:mod:`.batch`, with :mod:`.unbake`): the batch made symbolic wherever the export baked in a 1;
6. ``shapes`` (:mod:`.size`): the graph specialised to the default input size, with the shapes of every tensor.

The modules import one another in one direction only (``.importlinter`` checks it): record, weightless, probe,
inference and unbake at the bottom, the passes above them; nothing here imports graph/shapes.py, runtime or the
Model.
"""
from .batch import BATCH_DIM, BatchPlan, batch_pass, batch_record
from .normalise import MIN_OPSET, normalise, normalise_passes
from .read import MAX_NODES, MAX_PIXELS, MAX_TENSOR_BYTES, read_model, read_pass
from .record import PassRecord

__all__ = ["PassRecord", "read_model", "read_pass", "normalise", "normalise_passes", "batch_pass", "batch_record",
           "BatchPlan", "BATCH_DIM", "MIN_OPSET", "MAX_NODES", "MAX_PIXELS", "MAX_TENSOR_BYTES"]
