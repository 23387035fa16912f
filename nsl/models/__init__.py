"""Models: a small CNN for the embedded digits data and a LightningModule that trains any classifier."""

from nsl.models.classifier import Classifier
from nsl.models.cnn import SmallCNN

__all__ = ["Classifier", "SmallCNN"]
