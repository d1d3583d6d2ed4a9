//! `up`: the whole stack in one process on the embedded store.
// TODO(up): wire control plane, proxy and gateway once their crates expose `bind`/`run`.

use crate::args::UpArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &UpArgs) -> Result<()> {
    Err(Error::Stack(
        "up: no server component is available in this build yet".into(),
    ))
}
