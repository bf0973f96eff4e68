"""edge-mobilenet: build, convert and benchmark MobileNet-class models for ARM CPUs."""

__version__ = "0.1.0"
