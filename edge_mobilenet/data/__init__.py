"""Datasets, image folders, preprocessing and calibration sets."""
