"""Framework -> ONNX converters (installed as ``onnx_cnnviz.converters``): ``torch`` (torchvision / timm / your own
modules). Each converter records the preprocessing and class names in the ONNX metadata so ``cnnviz`` needs no
flags for them."""
