"""moe-cts: conformance and hardware test suite for aclnnMoeDistributeDispatchV4 / CombineV4."""
__version__ = "0.1.0"
