"""Models on the packed varlen layout."""
from elasticast_kernels.models.elasticast import ElasticAST
from elasticast_kernels.models.packed_ast import PackedAST

__all__ = ["ElasticAST", "PackedAST"]
