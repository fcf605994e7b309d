"""The model: backbone, head, pooling, the trained-model folder."""
