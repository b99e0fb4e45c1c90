"""Training code for MoGe4D (datasets first; trainers later). Not imported by the ComfyUI nodes."""
