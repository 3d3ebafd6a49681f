"""Models on the packed varlen layout."""
from elasticast_kernels.models.elasticast import ElasticAST

__all__ = ["ElasticAST"]
