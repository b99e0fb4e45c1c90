"""Training code for MoGe4D: datasets, prepare, trainers (accelerate), evaluation, the nano model. Not imported by
the ComfyUI nodes."""
