"""Training the shipped nano model (``moge4d_core/nano_model``) with the project's trainers."""
