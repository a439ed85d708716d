//! What stops a running sandbox's VM when another part of it fails:
//! virtiofsd ending or no longer answering the guest, or the agent not
//! answering its health check (a hung guest kernel, agent or VMM, or a lost
//! vsock connection). QEMU's vsock
//! backend is watched by the QEMU backend itself. The VMM is killed and its
//! end reads [`VmExit::Failed`] with the fault, which ends every container
//! of the sandbox, so containerd sees the tasks exit instead of tasks that
//! look alive in a guest that can no longer run them.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent_client::{AgentClient, HealthCheckError};
use crate::hypervisor::{Fault, Helper, VmExit, VmmKiller};
use crate::sys::child::ChildEnd;
use crate::watch::wait_set_or_never;

/// Stops the VM when virtiofsd ends before it (not when it only follows
/// the VMM's own end).
pub fn watch_virtiofsd(
    mut end: watch::Receiver<Option<ChildEnd>>,
    killer: VmmKiller,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(end) = end.wait_for(Option::is_some).await.map(|e| *e) else {
            return;
        };
        let status = match end {
            Some(ChildEnd::Exited(status)) => status,
            _ => None,
        };
        killer
            .helper_ended(Fault::HelperEnded {
                helper: Helper::Virtiofsd,
                status,
            })
            .await;
    })
}

/// Checks the agent (and, with `probe`, that the filesystem there answers
/// in the guest) every `every` while the VM runs, and stops the VM at the
/// first check that fails.
pub fn check_agent(
    agent: AgentClient,
    probe: Option<&'static str>,
    (every, deadline): (Duration, Duration),
    vm_exit: watch::Receiver<Option<VmExit>>,
    killer: VmmKiller,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let check = || {
            let agent = agent.clone();
            async move { agent.health_check(probe.unwrap_or(""), deadline).await }
        };
        if let Some(fault) = first_failed_check(every, deadline, check, vm_exit).await {
            killer.kill(fault);
        }
    })
}

/// Runs `check` every `every` until one fails (its fault) or the VM ends
/// (`None`).
pub async fn first_failed_check<C, F>(
    every: Duration,
    deadline: Duration,
    check: C,
    vm_exit: watch::Receiver<Option<VmExit>>,
) -> Option<Fault>
where
    C: Fn() -> F,
    F: Future<Output = Result<(), HealthCheckError>>,
{
    let checks = async {
        loop {
            tokio::time::sleep(every).await;
            match check().await {
                Ok(()) => continue,
                Err(HealthCheckError::Silent) => return Fault::AgentSilent(deadline),
                Err(HealthCheckError::Disconnected) => return Fault::AgentLost("closed"),
                Err(HealthCheckError::ShareSilent) => return Fault::ShareSilent,
                Err(HealthCheckError::Refused) => {
                    return Fault::AgentLost("the agent refused its health check")
                }
            }
        }
    };
    tokio::select! {
        fault = checks => Some(fault),
        _ = wait_set_or_never(vm_exit) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    const EVERY: Duration = Duration::from_secs(10);
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A check that answers `answers` in turn, then `last` for ever.
    fn scripted(
        answers: Vec<Result<(), HealthCheckError>>,
        last: Result<(), HealthCheckError>,
    ) -> (
        Arc<AtomicU32>,
        impl Fn() -> std::future::Ready<Result<(), HealthCheckError>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let check = move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) as usize;
            std::future::ready(answers.get(n).copied().unwrap_or(last))
        };
        (calls, check)
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_fails_after_good_ones_names_why() {
        let (_tx, exit) = watch::channel(None);
        let (calls, check) = scripted(vec![Ok(()), Ok(())], Err(HealthCheckError::Disconnected));
        let started = tokio::time::Instant::now();
        let fault = first_failed_check(EVERY, DEADLINE, check, exit).await;
        assert_eq!(fault, Some(Fault::AgentLost("closed")));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), EVERY * 3);

        let (_tx, exit) = watch::channel(None);
        let (_, check) = scripted(vec![], Err(HealthCheckError::Silent));
        let fault = first_failed_check(EVERY, DEADLINE, check, exit).await;
        assert_eq!(fault, Some(Fault::AgentSilent(DEADLINE)));

        let (_tx, exit) = watch::channel(None);
        let (_, check) = scripted(vec![Ok(())], Err(HealthCheckError::ShareSilent));
        let fault = first_failed_check(EVERY, DEADLINE, check, exit).await;
        assert_eq!(fault, Some(Fault::ShareSilent));
    }

    #[tokio::test(start_paused = true)]
    async fn checks_stop_when_the_vm_ends() {
        let (tx, exit) = watch::channel(None);
        let (calls, check) = scripted(vec![], Ok(()));
        let checking = tokio::spawn(first_failed_check(EVERY, DEADLINE, check, exit));
        tokio::time::sleep(EVERY * 5 + EVERY / 2).await;
        tx.send_replace(Some(VmExit::Exited(Some(0))));
        assert_eq!(checking.await.unwrap(), None);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }
}
