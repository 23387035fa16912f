"""Models: a small CNN for the embedded digits data and a LightningModule that trains any classifier."""

from nsl.models.classifier import Classifier
from nsl.models.cnn import SmallCNN

__all__ = ["Classifier", "SmallCNN"]

from nsl.models.harsanyinet import HarsanyiCNN, HarsanyiNet

__all__ += ["HarsanyiCNN", "HarsanyiNet"]

from nsl.models.zoo import resnet18, squeezenet, torchvision_model  # noqa: E402

__all__ += ["resnet18", "squeezenet", "torchvision_model"]
