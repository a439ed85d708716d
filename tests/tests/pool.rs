//! `hull pool`: new sandboxes of a containerd take VMs booted ahead, and
//! the pool boots replacements. Checked through a private containerd and
//! ctr: the sandbox's VM is the pool's (its state dir is named `pool-…`,
//! found through a symlink of the sandbox id), a sandbox of another size
//! boots its own, and when the pool stops nothing of it is left.

use std::path::Path;

use hull_tests::pool::{Pool, HANDED_OUT, READY};
use hull_tests::{
    assert_no_leftovers, describe, require_hull_shim, text, Containerd, HullConfig, HULL,
};

/// The name of the VM serving sandbox `id`, when it came from a pool.
fn pool_vm_of(c: &Containerd, id: &str) -> Option<String> {
    let link = std::fs::read_link(c.hull_state_dir().join(id)).ok()?;
    Some(link.to_string_lossy().into_owned())
}

fn containerd() -> Containerd {
    require_hull_shim();
    let c = Containerd::start();
    c.import_busybox();
    c
}

#[test]
fn a_sandbox_takes_a_vm_booted_ahead_and_the_pool_boots_another() {
    require_hull_shim();
    // Health checks every second: a VM that waits is checked many times
    // before its sandbox comes, and has no share mounted yet.
    let c = Containerd::start_with(HullConfig {
        extra: "health_check_interval_secs = 1\n".into(),
        ..HullConfig::from_env()
    });
    c.import_busybox();
    let mut pool = Pool::start(&c, 1);
    pool.wait_for(READY, 1);
    std::thread::sleep(std::time::Duration::from_secs(4));

    let id = c.id("pooled");
    c.run_detached(HULL, &id, &["sleep", "100000"]);
    let vm = pool_vm_of(&c, &id).expect("the sandbox's state dir is a pool VM's");
    assert!(vm.starts_with("pool-"), "{vm}");
    assert!(c.hull_state_dir().join(&vm).join("vmm.pid").exists());
    let release = c.exec(&id, "uname", &["uname", "-r"], None);
    assert!(release.status.success(), "{}", describe(&release));
    assert!(
        text(&release.stdout).trim().ends_with("-hull"),
        "{}",
        describe(&release)
    );
    // The replacement boots while the sandbox runs, and a container that
    // runs and exits takes it.
    pool.wait_for(READY, 2);
    let second = c.id("pooled");
    let output = c.ctr_run(HULL, &second, &["sh", "-c", "echo from the pool"], None);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(text(&output.stdout), "from the pool\n");
    pool.wait_for(HANDED_OUT, 2);
    assert!(
        !c.hull_state_dir().join(&second).exists(),
        "the second sandbox's name is left"
    );

    // The pool stops without waiting for the sandboxes it served, which
    // serve on.
    assert!(pool.stop(), "the pool exits 0 on SIGTERM");
    let after = c.exec(&id, "after", &["echo", "still here"], None);
    assert_eq!(text(&after.stdout), "still here\n", "{}", describe(&after));
    assert_eq!(c.kill_and_remove(&id), 137);
    assert!(
        !c.hull_state_dir().join(&id).exists(),
        "the sandbox's name is left"
    );
    assert!(
        !c.hull_state_dir().join(&vm).exists(),
        "the pool VM's state dir is left"
    );
    assert_no_leftovers(&c);
}

#[test]
fn a_sandbox_of_another_size_boots_a_vm_of_its_own() {
    let c = containerd();
    let mut pool = Pool::start(&c, 1);
    pool.wait_for(READY, 1);

    let id = c.id("sized");
    let args = [
        "run",
        "-d",
        "--runtime",
        HULL,
        "--annotation",
        "io.kubernetes.cri.sandbox-memory=402653184",
        hull_tests::BUSYBOX,
        &id,
        "sleep",
        "100000",
    ];
    let output = c.ctr(&args);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        pool_vm_of(&c, &id),
        None,
        "a pool VM of the default size served it"
    );
    assert!(Path::new(&c.hull_state_dir().join(&id).join("vmm.pid")).exists());

    // The pool's VM waited, and serves the next sandbox of its size.
    let next = c.id("default");
    c.run_detached(HULL, &next, &["sleep", "100000"]);
    let vm = pool_vm_of(&c, &next).expect("the pool's VM serves it");
    // Its shim (pool-<pid>-…) gets the OOM score a shim containerd's
    // `start` spawns gets: just above containerd's.
    let member: u32 = vm
        .split('-')
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {vm}"));
    let oom_score = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap_or_else(|e| panic!("oom_score_adj of {pid}: {e}"))
            .trim()
            .to_owned()
    };
    assert_eq!(oom_score(member), oom_score(c.shim_pid(&id)));
    assert_eq!(c.kill_and_remove(&next), 137);
    assert_eq!(c.kill_and_remove(&id), 137);

    assert!(pool.stop());
    assert_no_leftovers(&c);
}

/// A claimed shim whose sandbox asks for another Hull configuration than
/// the pool booted with (here: another log size) stops the VM booted ahead
/// and boots one with the sandbox's configuration.
#[test]
fn a_sandbox_of_another_configuration_boots_a_vm_of_its_own() {
    let c = containerd();
    let config = c.dir().join("pool.toml");
    let mut toml = std::fs::read_to_string(c.hull_config()).unwrap();
    toml.push_str("log_max_kib = 4321\n");
    std::fs::write(&config, toml).unwrap();
    let mut pool = Pool::start_with_config(&c, 1, &config);
    pool.wait_for(READY, 1);

    let id = c.id("configured");
    c.run_detached(HULL, &id, &["sleep", "100000"]);
    pool.wait_for(HANDED_OUT, 1);
    assert_eq!(pool_vm_of(&c, &id), None, "the VM booted ahead served it");
    assert!(c.hull_state_dir().join(&id).join("vmm.pid").exists());
    let release = c.exec(&id, "uname", &["uname", "-r"], None);
    assert!(
        text(&release.stdout).trim().ends_with("-hull"),
        "{}",
        describe(&release)
    );
    assert_eq!(c.kill_and_remove(&id), 137);

    assert!(pool.stop());
    assert_no_leftovers(&c);
}

/// A Kubernetes pod from the pool: its VM booted with a tap in a namespace
/// of its own, which moves into the pod's at RunPodSandbox; the guest NIC
/// takes the pod's MAC. The pod's network then answers as under runc.
#[test]
fn a_pod_takes_a_vm_booted_ahead_and_its_network_matches_runc() {
    use hull_tests::cri::scenarios::{self, Held, Teardown};
    use hull_tests::cri::{CriContainerd, HULL_HANDLER, RUNC_HANDLER};

    require_hull_shim();
    let cri = CriContainerd::start();
    let mut pool = Pool::start(cri.containerd(), 1);
    pool.wait_for(READY, 1);

    let without_teardown = |mut result: scenarios::PodNetworking| {
        let teardown = std::mem::replace(
            &mut result.teardown,
            Teardown {
                held: Held::ALL,
                left: Default::default(),
            },
        );
        assert_eq!(teardown.held, Held::ALL, "what the running pod held");
        assert_eq!(teardown.left, Default::default(), "left behind");
        result
    };
    let runc = without_teardown(scenarios::pod_networking(&cri, RUNC_HANDLER));
    let hull = without_teardown(scenarios::pod_networking(&cri, HULL_HANDLER));
    pool.wait_for(HANDED_OUT, 1);
    assert_eq!(
        hull, runc,
        "Hull from the pool (left) and runc (right) differ"
    );
    assert_eq!(hull.host_to_pod, "hello-from-pod\n");
    assert_eq!(hull.pod_to_host, "hello-from-host\n");

    assert!(pool.stop());
    assert_no_leftovers(cri.containerd());
}
