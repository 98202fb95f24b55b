"""Pure forward/backward function pairs (no state): linear, conv (im2col), batch norm,
pooling, activations and the loss. Rules, layers, tests and cross-checks call them directly."""
