"""HU windows (torch-free, so command-line parsing can name the default without importing torch)."""

# The lung window (W 1500, L -500): HU → [0, 1] for CT volumes when neither the user nor the checkpoint
# says otherwise.
LUNG_WINDOW = (-1250.0, 250.0)
