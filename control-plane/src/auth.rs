//! Bearer-token authentication of gRPC calls (DESIGN §10).
