//! tracing subscriber set-up (JSON when stderr is not a terminal).
