//! No duplicate agents after a crash of the control plane: each agent is started with
//! `PR_SET_PDEATHSIG = SIGKILL`, so when the replica that launched it dies (even by SIGKILL,
//! when no cleanup code runs) the kernel kills the agent at once, and the next leader can start
//! its own copy on the same port. A graceful loss of leadership stops the processes explicitly
//! (see `actor::shutdown_all`). Limits: the signal follows the launching *thread* (tokio worker
//! threads live as long as the runtime), and only the direct child gets it — grandchildren that
//! the agent spawned are reparented; they are killed with the group on every orderly stop, and
//! after a crash the next launch of the service finds and kills them (`orphans`).

use tokio::process::Command;

/// Arms `PR_SET_PDEATHSIG(SIGKILL)` in the child between fork and exec.
#[allow(unsafe_code)]
pub fn kill_when_parent_dies(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2), which
    // is async-signal-safe; it touches no memory of the parent and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
