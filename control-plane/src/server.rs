//! Bind every listener, then run: the control plane process composed from its modules.
