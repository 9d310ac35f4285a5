"""The serving runtime of split inference: wire format, model repository, Open Inference
Protocol v2 gRPC server, device runtime and the shaped uplink (see docs/deploy.md)."""
