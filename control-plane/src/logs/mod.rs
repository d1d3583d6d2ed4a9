//! Agent and manager logs: capture, on-disk storage with rotation, query, search, follow.
