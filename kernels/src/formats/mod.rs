//! Tensor block formats: one file per format (layout, reference quantize/dequantize, dot products).
