//! One function per command: build the request, call the control plane, render the answer.

pub mod connections;
pub mod observe;
pub mod routing;
pub mod services;
