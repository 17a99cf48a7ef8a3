"""Framework -> ONNX converters (installed as ``onnx_cnnviz.converters``): ``torch`` (torchvision / timm / your own
modules) and ``keras`` (tf.keras / Keras 3 through tf2onnx, with an NCHW input; needs the ``keras`` extra). Each
converter records the preprocessing and class names in the ONNX metadata so ``cnnviz`` needs no flags for them."""
