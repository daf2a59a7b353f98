"""Taps: where the gradient is read (the inputs, an embedding's outputs, a fused RNN's or a cell loop's states)."""
