"""cnnlab: image-classification studies on small data sets, from one study file."""
__version__ = "0.1.0"
