"""medclip-nb: notebook-first MedCLIP-style pretraining on chest X-rays (MIMIC-CXR)."""

__version__ = "0.1.0"
