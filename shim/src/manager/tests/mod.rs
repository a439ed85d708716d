//! The lifecycle state machine against a fake agent and a fake VM: create,
//! start, exec, kill, wait, delete, a boot that others wait on, VM death
//! and agent errors, with no VM anywhere.

mod fakes;

use std::time::{Duration, Instant};

use tokio::sync::watch;

use self::fakes::Harness;
use super::watchers::OomFilter;
use super::*;
use crate::hypervisor::VmExit;

/// Long enough for anything that should happen at once; calls that would
/// block never get there.
const PROMPTLY: Duration = Duration::from_secs(5);

async fn promptly<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PROMPTLY, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer at once"))
}

#[tokio::test]
async fn containers_created_while_the_vm_boots_answer_state_pids_and_kill_at_once() {
    let mut h = Harness::new();
    let pid = promptly("create", h.manager.create(h.request("pod", "pod", true)))
        .await
        .unwrap();
    assert_eq!(pid, 0, "created before the VM is up");
    assert!(h.manager.booting());
    let pid = promptly("create", h.manager.create(h.request("app", "pod", false)))
        .await
        .unwrap();
    assert_eq!(pid, 0);
    for id in ["pod", "app"] {
        let state = h.manager.state(id, "").unwrap();
        assert_eq!((state.status, state.pid), (ProcessStatus::Created, 0));
        assert_eq!(
            promptly("pids", h.manager.pids(id)).await.unwrap(),
            Vec::<u32>::new()
        );
    }
    // Start waits for the VM; meanwhile State still answers.
    let start = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.start("app", "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!start.is_finished(), "Start returned before the VM was up");
    assert_eq!(
        h.manager.state("app", "").unwrap().status,
        ProcessStatus::Created
    );
    assert!(
        h.agent.calls().is_empty(),
        "the agent was called before it existed"
    );

    h.boot();
    let pid = promptly("start", start).await.unwrap().unwrap();
    assert!(pid > 0);
    assert_eq!(
        h.manager.state("app", "").unwrap().status,
        ProcessStatus::Running
    );
    assert_eq!(h.log.lock().unwrap().boots, 1, "one VM for the pod");
    let mounted = h.log.lock().unwrap().mounted.clone();
    assert!(mounted.contains(&"pod".to_owned()) && mounted.contains(&"app".to_owned()));
    assert!(matches!(h.event().await, Event::Created { ref id, pid: 0, .. } if id == "pod"));
    assert!(matches!(h.event().await, Event::Created { ref id, pid: 0, .. } if id == "app"));
    assert!(matches!(h.event().await, Event::Started { ref id, .. } if id == "app"));
}

#[tokio::test]
async fn a_container_killed_before_the_vm_is_up_ends_with_the_signal_and_its_delete_cancels_the_boot(
) {
    let mut h = Harness::new();
    h.manager
        .create(h.request("c1", "c1", false))
        .await
        .unwrap();
    assert!(matches!(h.event().await, Event::Created { .. }));
    // An ignored signal does nothing; SIGTERM ends it, as it would a fresh process.
    promptly(
        "kill",
        h.manager.kill("c1", "", libc::SIGWINCH as u32, false),
    )
    .await
    .unwrap();
    assert_eq!(
        h.manager.state("c1", "").unwrap().status,
        ProcessStatus::Created
    );
    promptly(
        "kill",
        h.manager.kill("c1", "", libc::SIGTERM as u32, false),
    )
    .await
    .unwrap();
    match h.event().await {
        Event::Exited { id, exit, .. } => assert_eq!((id.as_str(), exit.status), ("c1", 143)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        promptly("wait", h.manager.wait("c1", ""))
            .await
            .unwrap()
            .status,
        143
    );
    let state = h.manager.state("c1", "").unwrap();
    assert_eq!(state.status, ProcessStatus::Stopped);
    let err = h.manager.start("c1", "").await.unwrap_err();
    assert!(
        err.to_string().contains("stopped before it was created"),
        "{err}"
    );

    let (_, exit) = promptly("delete", h.manager.delete("c1", ""))
        .await
        .unwrap();
    assert_eq!(exit.status, 143);
    assert!(matches!(h.event().await, Event::Deleted { .. }));
    let log = h.log.lock().unwrap();
    assert_eq!(log.cancelled.len(), 1, "the boot was cancelled");
    assert!(log.mounted.is_empty() && h.agent.calls().is_empty());
    assert!(matches!(
        h.manager.state("c1", ""),
        Err(LifecycleError::ContainerNotFound(_))
    ));
}

#[tokio::test]
async fn a_failed_boot_fails_every_container_that_waited_and_delete_leaves_nothing() {
    let h = Harness::with_boot_failure(Some("no kernel"));
    h.manager
        .create(h.request("pod", "pod", true))
        .await
        .unwrap();
    h.manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap();
    h.boot();
    for id in ["pod", "app"] {
        let err = promptly("start", h.manager.start(id, ""))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no kernel"), "{err}");
    }
    // A container created after the failure is refused with the same cause.
    let err = h
        .manager
        .create(h.request("late", "pod", false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no kernel"), "{err}");
    for id in ["app", "pod"] {
        promptly("delete", h.manager.delete(id, "")).await.unwrap();
    }
    assert!(h.agent.calls().is_empty());
    assert_eq!(h.log.lock().unwrap().shutdowns, 0, "no VM was left to stop");
    assert!(h.manager.shutdown().await);
}

#[tokio::test]
async fn exec_kill_wait_and_delete_after_the_vm_is_up() {
    let mut h = Harness::new();
    h.running_pod().await;
    let pid = h
        .manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap();
    assert!(pid > 0, "created in the guest before Create returns");
    h.manager.start("app", "").await.unwrap();
    assert!(matches!(h.event().await, Event::Created { pid: p, .. } if p == pid));
    assert!(matches!(h.event().await, Event::Started { .. }));

    h.manager
        .add_exec("app", "e1", b"{}".to_vec(), StdioPaths::default())
        .unwrap();
    let err = h
        .manager
        .add_exec("app", "e1", b"{}".to_vec(), StdioPaths::default())
        .unwrap_err();
    assert!(matches!(err, LifecycleError::ExecExists(_)));
    h.manager.start("app", "e1").await.unwrap();
    assert!(matches!(h.event().await, Event::ExecAdded { .. }));
    assert!(matches!(h.event().await, Event::ExecStarted { .. }));
    let err = h.manager.start("app", "e1").await.unwrap_err();
    assert!(err.to_string().contains("already started"), "{err}");
    h.agent.exit("app", "e1", 3);
    assert_eq!(
        promptly("wait", h.manager.wait("app", "e1"))
            .await
            .unwrap()
            .status,
        3
    );
    assert!(
        matches!(h.event().await, Event::Exited { ref exec_id, exit, .. } if exec_id == "e1" && exit.status == 3)
    );
    h.manager.delete("app", "e1").await.unwrap();
    assert!(matches!(
        h.manager.state("app", "e1"),
        Err(LifecycleError::ExecNotFound(_))
    ));

    let err = h.manager.delete("app", "").await.unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    h.manager.pause("app").await.unwrap();
    assert_eq!(
        h.manager.state("app", "").unwrap().status,
        ProcessStatus::Paused
    );
    h.manager.resume("app").await.unwrap();
    h.manager
        .kill("app", "", libc::SIGKILL as u32, false)
        .await
        .unwrap();
    assert_eq!(
        promptly("wait", h.manager.wait("app", ""))
            .await
            .unwrap()
            .status,
        137
    );
    let err = h
        .manager
        .kill("app", "", libc::SIGKILL as u32, false)
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Finished));
    h.manager.delete("app", "").await.unwrap();
    let calls = h.agent.calls();
    assert!(calls.contains(&"remove app".to_owned()), "{calls:?}");
    assert!(h.log.lock().unwrap().unmounted.contains(&"app".to_owned()));
    assert_eq!(
        h.log.lock().unwrap().shutdowns,
        0,
        "the pod's VM stays for its pause container"
    );

    // The pod's own container takes the VM with it.
    h.manager
        .kill("pod", "", libc::SIGKILL as u32, false)
        .await
        .unwrap();
    h.manager.wait("pod", "").await.unwrap();
    h.manager.delete("pod", "").await.unwrap();
    assert_eq!(h.log.lock().unwrap().shutdowns, 1);
    assert!(h.manager.shutdown().await);
}

#[tokio::test]
async fn vm_death_ends_started_and_never_started_containers() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.manager
        .create(h.request("idle", "pod", false))
        .await
        .unwrap();
    h.vm_exit.send_replace(Some(VmExit::Killed));
    for id in ["pod", "idle"] {
        let exit = promptly("wait", h.manager.wait(id, "")).await.unwrap();
        assert_eq!(exit.status, UNKNOWN_EXIT, "{id}");
    }
    let mut exited = Vec::new();
    while exited.len() < 2 {
        if let Event::Exited { id, .. } = h.event().await {
            exited.push(id);
        }
    }
    exited.sort();
    assert_eq!(exited, ["idle", "pod"]);
    // A dead VM's containers delete without the agent, and a kill of all
    // their processes (containerd's CRI sends one on every exit) succeeds.
    let calls = h.agent.calls().len();
    promptly(
        "kill",
        h.manager.kill("pod", "", libc::SIGKILL as u32, true),
    )
    .await
    .unwrap();
    assert!(matches!(
        h.manager.kill("pod", "", libc::SIGKILL as u32, false).await,
        Err(LifecycleError::Finished)
    ));
    h.manager.delete("idle", "").await.unwrap();
    h.manager.delete("pod", "").await.unwrap();
    assert_eq!(h.agent.calls().len(), calls);
    assert_eq!(h.log.lock().unwrap().shutdowns, 1);
}

#[tokio::test]
async fn a_lost_agent_connection_ends_the_vm_and_then_every_process() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.manager
        .add_exec("pod", "e1", b"{}".to_vec(), StdioPaths::default())
        .unwrap();
    h.manager.start("pod", "e1").await.unwrap();
    assert!(matches!(h.event().await, Event::ExecAdded { .. }));
    assert!(matches!(h.event().await, Event::ExecStarted { .. }));
    h.agent
        .guest
        .lock()
        .unwrap()
        .disconnected
        .send_replace(true);
    for exec_id in ["e1", ""] {
        let exit = promptly("wait", h.manager.wait("pod", exec_id))
            .await
            .unwrap();
        assert_eq!(exit.status, UNKNOWN_EXIT, "{exec_id:?}");
    }
    // Not two processes that "exited" in a guest that still runs: the VM
    // was stopped, once, naming why.
    let faults = h.log.lock().unwrap().faults.clone();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert!(matches!(faults[0], crate::hypervisor::Fault::AgentLost(_)));
    assert!(matches!(
        *h.vm_exit.borrow(),
        Some(VmExit::Failed(crate::hypervisor::Fault::AgentLost(_)))
    ));
}

#[tokio::test]
async fn an_agent_error_is_returned_with_its_message_and_the_container_is_undone() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.agent.guest.lock().unwrap().fail_create = Some("exec: \"nope\" not found".into());
    let err = h
        .manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Agent { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(matches!(
        h.manager.state("app", ""),
        Err(LifecycleError::ContainerNotFound(_))
    ));
    assert!(h.log.lock().unwrap().unmounted.contains(&"app".to_owned()));
    // The pod keeps its VM, and a container of another sandbox is refused.
    assert_eq!(h.log.lock().unwrap().shutdowns, 0);
    let err = h
        .manager
        .create(h.request("other", "other-pod", true))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::OtherSandbox { .. }),
        "{err:?}"
    );
    let err = h
        .manager
        .create(h.request("pod", "pod", true))
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::ContainerExists(_)));
}

#[tokio::test]
async fn one_containers_slow_call_does_not_hold_up_another() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.manager
        .create(h.request("slow", "pod", false))
        .await
        .unwrap();
    h.manager
        .create(h.request("quick", "pod", false))
        .await
        .unwrap();
    let (release, hold) = watch::channel(false);
    h.agent.guest.lock().unwrap().hold_start = Some(hold);
    let slow = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.start("slow", "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!slow.is_finished());
    let started = Instant::now();
    h.manager.state("quick", "").unwrap();
    h.manager.state("slow", "").unwrap();
    promptly("pids", h.manager.pids("quick")).await.unwrap();
    promptly(
        "kill",
        h.manager.kill("pod", "", libc::SIGWINCH as u32, false),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < PROMPTLY);
    release.send_replace(true);
    promptly("start", slow).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_call_held_by_a_hung_guest_ends_with_the_vm() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap();
    let (_release, hold) = watch::channel(false);
    h.agent.guest.lock().unwrap().hold_start = Some(hold);
    let start = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.start("app", "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!start.is_finished());
    let hung = crate::hypervisor::Fault::AgentSilent(Duration::from_secs(30));
    h.vm_exit.send_replace(Some(VmExit::Failed(hung)));
    let err = promptly("start", start).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("the sandbox VM stopped"), "{err}");
}

#[tokio::test]
async fn a_kill_held_by_a_hung_guest_ends_as_a_kill_after_the_vm() {
    let mut h = Harness::new();
    h.running_pod().await;
    let (_release, hold) = watch::channel(false);
    h.agent.guest.lock().unwrap().hold_signal = Some(hold);
    let kill = |all| {
        let manager = h.manager.clone();
        tokio::spawn(async move { manager.kill("pod", "", libc::SIGKILL as u32, all).await })
    };
    let (one, all) = (kill(false), kill(true));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!one.is_finished() && !all.is_finished());
    let hung = crate::hypervisor::Fault::AgentSilent(Duration::from_secs(30));
    h.vm_exit.send_replace(Some(VmExit::Failed(hung)));
    assert!(matches!(
        promptly("kill", one).await.unwrap(),
        Err(LifecycleError::Finished)
    ));
    promptly("kill --all", all).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_kill_whose_connection_breaks_as_the_vm_ends_answers_as_after_it() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.agent.guest.lock().unwrap().fail_signal = Some("socket err: Connection reset by peer".into());
    let kill = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.kill("pod", "", libc::SIGKILL as u32, false).await }
    });
    // The VM's exit is seen a moment after the connection broke.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.vm_exit.send_replace(Some(VmExit::Killed));
    assert!(matches!(
        promptly("kill", kill).await.unwrap(),
        Err(LifecycleError::Finished)
    ));
    // With the VM alive, the agent's error is the answer.
    let mut h = Harness::new();
    h.running_pod().await;
    h.agent.guest.lock().unwrap().fail_signal = Some("no such process".into());
    let err = h
        .manager
        .kill("pod", "", libc::SIGKILL as u32, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such process"), "{err}");
}

#[tokio::test]
async fn a_stream_that_fails_to_open_closes_the_fifos_already_wired() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    for fifo in [&stdout, &stderr] {
        nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    // containerd's end, reading until every writer is gone.
    let mut reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&stdout)
        .unwrap();
    let agent = fakes::FakeAgent::default();
    agent.guest.lock().unwrap().stdout_only = true;
    let paths = StdioPaths {
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        ..Default::default()
    };
    let attached = stdio::ProcessIo::attach(&agent, "app", "e1", &StdioWiring::Fifos(paths)).await;
    assert!(attached.is_err(), "stderr was refused");
    // The stdout copy that had started is stopped, so the FIFO ends
    // although the guest's stream never does.
    let mut buffer = [0u8; 8];
    let read = promptly("the FIFO's end", reader.read(&mut buffer)).await;
    assert_eq!(read.unwrap(), 0);
}

#[test]
fn oom_reports_pass_only_for_known_containers_once_a_second() {
    let mut filter = OomFilter::default();
    let start = Instant::now();
    assert!(!filter.admit("not-ours", false, start));
    assert!(filter.admit("c1", true, start));
    for ms in [1, 10, 500, 999] {
        assert!(!filter.admit("c1", true, start + Duration::from_millis(ms)));
    }
    assert!(filter.admit("c2", true, start + Duration::from_millis(1)));
    assert!(filter.admit("c1", true, start + Duration::from_millis(1000)));
    // A flood of unknown ids keeps nothing.
    for n in 0..10_000 {
        assert!(!filter.admit(&format!("x{n}"), false, start));
    }
    assert_eq!(filter.remembered(), 2);
}
