"""Where each GPU type can be had, at what price and speed, and how far apart regions are.

Placement and routing read this instead of hard-coding cloud facts; the bundled data is
gcp.yaml, and a user YAML file with the same schema can extend or override it.
"""

from gpuroam.catalog.loader import CatalogError, load_catalog
from gpuroam.catalog.model import CONTINENTS, Catalog, GpuType, Offer, Region, SpotTerms

__all__ = ["CONTINENTS", "Catalog", "CatalogError", "GpuType", "Offer", "Region", "SpotTerms", "load_catalog"]
