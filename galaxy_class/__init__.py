"""galaxy-class: Galaxy10 morphology with small, fast CNNs."""

from galaxy_class.errors import GalaxyClassError

__all__ = ["GalaxyClassError"]
__version__ = "0.2.0"
