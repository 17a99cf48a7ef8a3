"""Tasks beyond classification: detectors and segmenters.

A decoder (:mod:`.decoders`) turns a detector's head output into detections and the tensor elements behind them;
heads spread over several outputs are joined into one in the graph first: :func:`picodet_head` (PicoDet),
:func:`nms_head` (NMS inside the graph: torchvision SSD, RetinaNet), :func:`detr_head` (DETR-style queries),
:func:`yolo_seg_head` (ultralytics segmentation: each anchor's mask mass, :func:`mask_target`);
:class:`Detection` (:mod:`.detection`) is the target that explains one; a segmenter's targets are
:class:`onnx_cnnviz.targets.Region` (a text detector's, :class:`TextRegion`). Methods and metrics see targets, never
tasks.
"""
from .decoders import (Candidates, Decoder, UltralyticsDecoder, YoloV5Decoder, find_decoder, recognise,
                       register_decoder)
from .detection import Detection, detect, explain
from .head import TASKS, NotAClassifierError, check_head, head_output, not_a_classifier
from .nms import box_iou, nms
from .drise import drise, drise_masks
from .picodet import PICODET_OUTPUT, PicoDetDecoder, picodet_head
from .nms_head import NMS_OUTPUT, NmsDecoder, nms_head
from .detr import DETR_OUTPUT, DETR_SIGMOID_OUTPUT, DetrDecoder, detr_head
from .yolo_seg import YOLO_SEG_OUTPUT, YoloSegDecoder, mask_target, yolo_seg_head
from .text import TextRegion, text_regions

__all__ = ["TASKS", "NotAClassifierError", "Candidates", "Decoder", "UltralyticsDecoder", "YoloV5Decoder",
           "register_decoder", "recognise", "find_decoder", "Detection", "detect", "explain", "nms", "box_iou",
           "check_head", "head_output", "not_a_classifier",
           "PICODET_OUTPUT", "PicoDetDecoder", "picodet_head", "TextRegion", "text_regions",
           "drise", "drise_masks", "NMS_OUTPUT", "NmsDecoder", "nms_head",
           "DETR_OUTPUT", "DETR_SIGMOID_OUTPUT", "DetrDecoder", "detr_head",
           "YOLO_SEG_OUTPUT", "YoloSegDecoder", "mask_target", "yolo_seg_head"]
