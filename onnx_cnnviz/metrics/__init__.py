"""Faithfulness and robustness metrics over any method's explanations, batched through onnxruntime.

    import onnx_cnnviz as cv
    from onnx_cnnviz import metrics

    cam = cv.grad_cam(m, x)                              # (N, H, W) in [0, 1]
    metrics.deletion(m, x, cam).mean()                   # RISE deletion AUC (lower is better)
    metrics.insertion(m, x, cam).values                  # one AUC per image (higher is better)
    drop, increase = metrics.confidence_change(m, x, cam)    # Grad-CAM++'s average drop / increase in confidence
    metrics.road(m, x, cam, order="morf")                # ROAD (noisy linear imputation), pytorch-grad-cam's numbers
    metrics.infidelity(m, x, cv.gradients(m, x))         # Yeh et al., as captum computes it
    metrics.sensitivity_max(m, x, "gradcam")             # re-explains perturbed copies of x
    metrics.registry.evaluate("deletion", m, x, cam)     # any metric by name (the table a command line lists)
    boxes = metrics.boxes_for_images(metrics.read_boxes("boxes.csv"), paths, sizes, input_size=(224, 224))
    metrics.localisation(m, x, cam, boxes)               # pointing game, energy pointing game, localisation accuracy
    metrics.randomisation_check(m, x, ["saliency", "gradcam", "guided"])  # Adebayo et al.'s sanity check

A detector's explanations are measured per detection (:mod:`.detections`)::

    dets = [d for image in cv.tasks.detect(m, x) for d in image]
    maps = cv.tasks.explain(cv.grad_cam, m, x, dets)    # one map per detection
    metrics.detection_pointing_game(m, x, maps, dets, boxes)   # against each detection's matched box
    metrics.detection_deletion(m, x, maps, dets)         # of its D-RISE similarity (Petsiuk et al. 2021)
    metrics.detection_randomisation(m, x, dets, ["saliency", "gradcam"])

Every metric returns a :class:`MetricResult`: ``values`` (one per image), ``mean()``, the ``curve`` behind it and
``output``, what was read from the model (probability or score, in words). Perturbed images are built and scored
``batch_size`` at a time, never all at once.
"""
from . import registry
from .base import MetricResult
from .boxes import Box, boxes_for_images, read_boxes, to_input
from .confidence import average_drop, confidence_change, increase_in_confidence
from .curves import deletion, insertion
from .detections import (detection_deletion, detection_insertion, detection_pointing_game, detection_randomisation,
                         match_detections)
from .imputation import road, road_combined, road_least_relevant_first, road_most_relevant_first
from .pointing import energy_pointing_game, localisation, localisation_accuracy, pointing_game
from .robustness import infidelity, sensitivity_max
from .sanity import SanityResult, model_randomisation, randomisation_check

__all__ = ["MetricResult", "registry", "deletion", "insertion", "confidence_change", "average_drop",
           "increase_in_confidence", "road", "road_most_relevant_first", "road_least_relevant_first", "road_combined",
           "infidelity", "sensitivity_max", "Box", "read_boxes", "to_input", "boxes_for_images", "localisation",
           "pointing_game", "energy_pointing_game", "localisation_accuracy", "SanityResult", "randomisation_check",
           "model_randomisation", "match_detections", "detection_pointing_game", "detection_deletion",
           "detection_insertion", "detection_randomisation"]
