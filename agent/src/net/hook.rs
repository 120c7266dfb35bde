//! The two calls the supervisor makes: [`start`] before a container is launched and [`stop`]
//! after its process ended, on a [`Network`] shared behind a mutex (absent when berthd has no
//! container network).

use std::sync::{Arc, Mutex};

use super::Network;
use crate::runtime::init::{error_chain, EXIT_SETUP_FAILED};
use crate::runtime::InitConfig;
use crate::runtime::LaunchError;

/// Attach `init`'s container: set its network namespace and add its name-file mounts.
pub fn start(
    network: Option<&Arc<Mutex<Network>>>,
    init: &mut InitConfig,
) -> Result<(), LaunchError> {
    let Some(network) = network else {
        return Ok(());
    };
    let fail = |message: String| LaunchError::Container {
        message: format!("container={}: {message}", init.name),
        code: EXIT_SETUP_FAILED,
    };
    let mut net = network
        .lock()
        .map_err(|_| fail("the network state is poisoned by an earlier panic".into()))?;
    let attached = net.attach(&init.name).map_err(|e| LaunchError::Container {
        message: error_chain(&e),
        code: EXIT_SETUP_FAILED,
    })?;
    init.network = attached.netns;
    init.rootfs.mounts.extend(attached.mounts);
    Ok(())
}

/// Detach container `name` (nothing happens when it was not attached).
pub fn stop(network: Option<&Arc<Mutex<Network>>>, name: &str) {
    if let Some(Ok(mut net)) = network.map(|n| n.lock()) {
        net.detach(name);
    }
}
