"""Generated protobuf and gRPC stubs for the confmesh.v1 wire contract (see proto/)."""
