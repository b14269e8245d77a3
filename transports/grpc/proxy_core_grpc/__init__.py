"""The gRPC backend of proxy-core."""
