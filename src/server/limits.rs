//! The process's open-file limit: each connection is a descriptor, so the
//! soft limit is raised to the hard one at start-up and the capacity logged.

#[cfg(unix)]
use std::io;

#[cfg(unix)]
use tracing::{info, warn};

/// Descriptors kept for listeners, the runtime and logging.
#[cfg(unix)]
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-file limit to the hard one (each connection is a
/// descriptor) and logs the resulting capacity; warns when
/// `max_connections` cannot fit, since accepts would then fail and back off.
pub fn check_descriptor_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        match raise_descriptor_limit() {
            Ok((before, limit)) => {
                let room = limit.saturating_sub(RESERVED_DESCRIPTORS);
                if limit > before {
                    info!(limit, "open-file limit {limit} (raised from {before}): room for about {room} connections");
                } else {
                    info!(
                        limit,
                        "open-file limit {limit}: room for about {room} connections"
                    );
                }
                if max_connections as u64 > room {
                    warn!(
                        "max_connections {max_connections} exceeds the open-file limit's room (about {room}): \
                         accepts will fail and back off before that many are open"
                    );
                }
            }
            Err(error) => warn!(%error, "cannot read or raise the open-file limit"),
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// (soft limit before, soft limit now)
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 here but not on every Unix
fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur as u64;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer. Some
        // systems cap the soft limit below an unlimited hard one: then keep it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((before, raised.rlim_cur as u64));
        }
    }
    Ok((before, before))
}
