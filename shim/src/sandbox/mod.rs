//! One sandbox VM on the host: its state directory, shared directory,
//! virtiofsd, VMM (with QEMU, the vsock backend it needs) and agent
//! connection, started in a fixed order and torn down in reverse, also when
//! starting fails half-way. What can be checked without starting anything
//! (the assets, the programs, whether the chosen backend can run on this
//! host) is checked before the state directory exists.

pub mod admission;
mod cgroup;
mod error;
mod guard;
mod guest_network;
mod launch;
mod log;
mod progress;
mod state_dir;
mod virtiofsd;
pub mod vmm_ids;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_protocols::agent::{CreateSandboxRequest, DestroySandboxRequest, SharedFilesystem};

pub use self::cgroup::{CgroupError, CgroupLimits, Hierarchies, SandboxCgroup};
pub use self::error::SandboxError;
use self::guest_network::configure_guest_network;
use self::launch::{kernel_cmdline, Launch, Programs};
pub use self::log::{capped_log, rotated_path, LogPipe};
pub use self::progress::{Milestone, Progress};
pub use self::state_dir::{create_state_dir, remove_state, SandboxPaths, SHARED_DIR_NAME};
pub use self::virtiofsd::{Virtiofsd, VirtiofsdLaunch};
pub use self::vmm_ids::VMM_ID_COUNT;
use crate::agent_client::{context, rpc_message, AgentClient, HybridVsock, ReadySignal};
use crate::config::Config;
use crate::host::Virtualization;
use crate::hypervisor::{self, Backend, Hypervisor, NetDevice, VmParams, VmmHost};
use crate::network::{format_mac, HeldTap, PodNetwork, TapHeader};
use crate::pod::VmSize;
use crate::port_forward::PortForwarder;
use crate::rootfs::{self, SharedDir};
pub use crate::sys::process::find_program;

/// virtio-fs tag of the sandbox share, and where the guest mounts it.
pub const SHARE_TAG: &str = "hull";
pub const GUEST_SHARE_DIR: &str = "/run/hull/shared";
/// Deadline of the calls that set the sandbox up once the agent has
/// answered (mounting the share, configuring the NIC): generous, since a
/// guest under emulation beside many others is slow, but bounded.
const SETUP_CALL: Duration = Duration::from_secs(60);
/// The guest's vsock CID (one vsock device per VM, so it never collides).
const GUEST_CID: u64 = 3;

/// What a sandbox's VM gets beyond the configuration: its size and, for a
/// pod, the network namespace CNI prepared.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub size: VmSize,
    pub netns: Option<PathBuf>,
    /// The guest's hostname (the pod's); empty leaves the guest's own.
    pub hostname: String,
}

pub struct SandboxVm {
    /// The sandbox's id: its pod's, or, until a pool's VM is claimed, its name.
    pub id: String,
    /// What the host's parts are named by (the state directory, the
    /// cgroups, the VMM's uid lease): the sandbox id, or the name a pool
    /// gave a VM it booted ahead.
    pub name: String,
    pub paths: SandboxPaths,
    network: Option<PodNetwork>,
    /// A VM booted ahead of its pod keeps its tap here until the pod's
    /// network takes it.
    held_tap: Option<HeldTap>,
    /// For a VM booted ahead and claimed: `<state_dir>/<sandbox id>`, a
    /// symlink to the state directory, through which the sandbox is found
    /// by its id (as `shim delete` does).
    alias: Option<PathBuf>,
    /// The VM's vCPUs and memory, fixed at boot.
    size: VmSize,
    hypervisor: Option<Box<dyn Hypervisor>>,
    virtiofsd: Option<Virtiofsd>,
    share: Option<SharedDir>,
    cgroup: Option<SandboxCgroup>,
    /// The copiers of the console and virtiofsd logs.
    logs: Vec<tokio::task::JoinHandle<std::io::Result<u64>>>,
    /// The tasks that stop the VM when another part of the sandbox fails.
    guards: Vec<tokio::task::JoinHandle<()>>,
    /// The health check of the agent alone, until the share is mounted.
    agent_check: Option<tokio::task::JoinHandle<()>>,
    /// What the health checks stop the VM with, and how often they run.
    health: Option<(hypervisor::VmmKiller, (Duration, Duration))>,
    /// The VMM's own uid/gid, held for the sandbox's life.
    _vmm_ids: Option<vmm_ids::VmmIdLease>,
    agent: Option<AgentClient>,
    /// `kubectl port-forward` into a pod's VM.
    port_forward: Option<PortForwarder>,
}

impl SandboxVm {
    /// What can be checked before anything starts: the assets, and the
    /// backend and programs for this host.
    pub fn preflight(config: &Config, options: &SandboxOptions) -> Result<(), SandboxError> {
        check_assets(config)?;
        Programs::find(config, options, Virtualization::detect()).map(drop)
    }

    /// Boots a sandbox VM and connects to its agent, given up as soon as
    /// `cancel` ends (with why). On failure everything started so far is
    /// stopped again and only the logs are kept; a cancelled start returns
    /// [`SandboxError::Cancelled`].
    pub async fn start_unless(
        config: &Config,
        id: &str,
        options: &SandboxOptions,
        progress: &Progress,
        cancel: impl std::future::Future<Output = String>,
    ) -> Result<Self, SandboxError> {
        let (mut vm, launch) = SandboxVm::prepare(config, id, options)?;
        let booted = tokio::select! {
            booted = vm.boot_and_attach(config, options, launch, progress) => booted,
            why = cancel => Err(SandboxError::Cancelled(why)),
        };
        match booted {
            Ok(()) => Ok(vm),
            Err(err) => {
                vm.teardown(true).await;
                Err(err)
            }
        }
    }

    /// Boots a VM of `size` ahead of its pod, for a pool: its host parts
    /// are named `name`, its NIC's tap waits in a network namespace of its
    /// own, and the guest knows no sandbox until [`SandboxVm::claim`].
    pub async fn start_ahead(
        config: &Config,
        name: &str,
        size: VmSize,
        progress: &Progress,
        cancel: impl std::future::Future<Output = String>,
    ) -> Result<Self, SandboxError> {
        let options = SandboxOptions {
            size,
            netns: None,
            hostname: String::new(),
        };
        let (mut vm, launch) = SandboxVm::prepare(config, name, &options)?;
        let booted = tokio::select! {
            booted = vm.boot(config, &options, Net::Held, launch, progress) => booted,
            why = cancel => Err(SandboxError::Cancelled(why)),
        };
        match booted {
            Ok(()) => Ok(vm),
            Err(err) => {
                // No shim's delete comes after a pool's VM: the logs of a
                // boot that failed are kept (the error names them), those
                // of one the pool stopped are not.
                let keep_logs = !matches!(err, SandboxError::Cancelled(_));
                vm.teardown(keep_logs).await;
                Err(err)
            }
        }
    }

    /// Makes a VM booted ahead the sandbox `id`: the pod's network takes
    /// its tap, and the agent learns the sandbox. On failure the caller
    /// shuts the VM down.
    pub async fn claim(
        &mut self,
        id: &str,
        options: &SandboxOptions,
        progress: &Progress,
    ) -> Result<(), SandboxError> {
        crate::ids::validate("sandbox id", id)?;
        let alias = self.paths.dir.with_file_name(id);
        std::os::unix::fs::symlink(&self.name, &alias).map_err(|source| SandboxError::Io {
            what: format!("naming {} for the sandbox", alias.display()),
            source,
        })?;
        self.alias = Some(alias);
        if let Some(netns) = &options.netns {
            self.network = PodNetwork::adopt(netns, &mut self.held_tap).await?;
            if self.network.is_some() {
                progress.step("pod network wired to the tap booted ahead");
            }
        }
        self.id = id.to_owned();
        self.attach(options, progress).await
    }

    /// The sandbox's size as booted.
    pub fn size(&self) -> VmSize {
        self.size
    }

    async fn boot_and_attach(
        &mut self,
        config: &Config,
        options: &SandboxOptions,
        launch: Launch,
        progress: &Progress,
    ) -> Result<(), SandboxError> {
        let net = match &options.netns {
            Some(netns) => Net::Pod(netns),
            None => Net::None,
        };
        self.boot(config, options, net, launch, progress).await?;
        self.attach(options, progress).await
    }

    /// What comes before the boot: the id's check, the assets, the VMM's
    /// uid, the launch, the state directory.
    fn prepare(
        config: &Config,
        id: &str,
        options: &SandboxOptions,
    ) -> Result<(Self, Launch), SandboxError> {
        crate::ids::validate("sandbox id", id)?;
        check_assets(config)?;
        let paths = SandboxPaths::new(&config.state_dir, id);
        let (vmm_ids, lease) = match (config.vmm_uid, config.vmm_gid) {
            (Some(uid), Some(gid)) => ((uid, gid), None),
            _ => {
                let lease = vmm_ids::lease(Path::new(vmm_ids::VMM_IDS_DIR), config.vmm_id_base, id)
                    .map_err(|source| SandboxError::Io {
                        what: "leasing the VMM's uid".into(),
                        source,
                    })?;
                ((lease.id, lease.id), Some(lease))
            }
        };
        let launch = Launch::prepare(config, &paths, options, Virtualization::detect(), vmm_ids)?;
        create_state_dir(&config.state_dir, &paths.dir)?;
        let vm = SandboxVm {
            id: id.to_owned(),
            name: id.to_owned(),
            size: options.size,
            paths,
            network: None,
            held_tap: None,
            alias: None,
            hypervisor: None,
            virtiofsd: None,
            share: None,
            cgroup: None,
            logs: Vec::new(),
            guards: Vec::new(),
            agent_check: None,
            health: None,
            _vmm_ids: lease,
            agent: None,
            port_forward: None,
        };
        Ok((vm, launch))
    }

    /// Boots the VM to an agent that answers: everything of the sandbox
    /// that does not depend on its pod.
    async fn boot(
        &mut self,
        config: &Config,
        options: &SandboxOptions,
        net: Net<'_>,
        launch: Launch,
        progress: &Progress,
    ) -> Result<(), SandboxError> {
        let Launch {
            backend,
            mut hypervisor,
            virtiofsd,
            jailer,
            vmm_ids,
        } = launch;
        let cgroup = SandboxCgroup::create(
            &Hierarchies::detect()?,
            &config.cgroup_parent,
            &self.name,
            host_limits(config, &options.size),
        )?;
        let cgroup_procs = cgroup.procs_files();
        self.cgroup = Some(cgroup);
        let userns = share_user_namespace(config)?.map(std::sync::Arc::new);
        self.share = Some(SharedDir::create(
            &self.paths.dir,
            SHARED_DIR_NAME,
            userns.clone(),
        )?);
        let log_max = config.log_max_kib << 10;
        let virtiofsd_log = self.log_pipe(&self.paths.virtiofsd_log.clone(), log_max)?;
        let launch = VirtiofsdLaunch {
            jailer: &jailer,
            binary: &virtiofsd,
            userns: userns.as_deref(),
        };
        self.virtiofsd = Some(Virtiofsd::start(
            &launch,
            &self.paths.virtiofsd,
            &self.paths.shared,
            virtiofsd_log,
            cgroup_procs?,
        )?);
        progress.step("virtiofsd started");

        let header = match backend {
            Backend::Builtin => TapHeader::VirtioNet,
            Backend::Qemu(_) => TapHeader::None,
        };
        match net {
            Net::None => {}
            Net::Pod(netns) => {
                self.network = PodNetwork::setup(netns, header).await?;
                progress.step("pod network wired to the tap");
            }
            Net::Held => self.held_tap = Some(HeldTap::create(header)?),
        }

        let vm_config = VmParams {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline: kernel_cmdline(config, backend, crate::host::tsc_khz()),
            vcpus: options.size.vcpus,
            memory_mib: options.size.memory_mib,
            vsock_uds: self.paths.vsock.clone(),
            guest_cid: GUEST_CID,
            fs_socket: self.paths.virtiofsd.clone(),
            fs_tag: SHARE_TAG.into(),
            console_log: self.paths.console_log.clone(),
            net: match (&self.network, &self.held_tap) {
                (Some(network), _) => Some(NetDevice {
                    tap_fd: network.tap().as_raw_fd(),
                    mac: format_mac(&network.interface.mac),
                }),
                // The agent gives the NIC the pod's MAC when it is claimed.
                (None, Some(held)) => Some(NetDevice {
                    tap_fd: held.tap().as_raw_fd(),
                    mac: format_mac(&ahead_mac(&self.name)),
                }),
                (None, None) => None,
            },
        };
        // Only so many VMs boot at once on this host; the boot deadline
        // starts once this one may.
        let slot = admission::acquire(
            Path::new(admission::SLOTS_DIR),
            admission::parallel_boots(config.max_parallel_boots),
        )
        .await
        .map_err(|source| SandboxError::Io {
            what: "taking a boot slot".into(),
            source,
        })?;
        if !slot.waited.is_zero() {
            progress.step(&format!("waited {:.1?} for a boot slot", slot.waited));
        }
        let host = VmmHost {
            console: self.log_pipe(&self.paths.console_log.clone(), log_max)?,
            cgroup_procs: self.cgroup.as_ref().expect("made above").procs_paths(),
        };
        // Where the agent says it serves, from the VMM's jail.
        let ready =
            ReadySignal::listen(&self.paths.vsock, vmm_ids).map_err(|source| SandboxError::Io {
                what: "listening for the agent's ready call".into(),
                source,
            })?;
        // Kept before it runs, so that a failed start is stopped with the rest.
        let started = hypervisor.start(&vm_config, host).await;
        let pid = hypervisor.pid();
        self.hypervisor = Some(hypervisor);
        started?;
        if let Some(pid) = pid {
            std::fs::write(&self.paths.vmm_pid, format!("{pid}\n")).map_err(|source| {
                SandboxError::Io {
                    what: format!("writing {}", self.paths.vmm_pid.display()),
                    source,
                }
            })?;
        }
        progress.milestone(Milestone::VmStarted, &format!("{backend} started"));
        let killer = self.hypervisor.as_ref().and_then(|h| h.killer());
        if let (Some(killer), Some(virtiofsd)) = (&killer, &self.virtiofsd) {
            let end = virtiofsd.end_watch();
            self.guards
                .push(guard::watch_virtiofsd(end, killer.clone()));
        }

        let vsock = HybridVsock::new(&self.paths.vsock);
        let agent = tokio::select! {
            agent = AgentClient::connect(vsock, Some(&ready), config.agent_timeout()) => agent.map_err(|source| SandboxError::Boot {
                source,
                queued: slot.waited,
                log: self.paths.console_log.clone(),
            })?,
            exit = self.wait_for_vm_exit() => {
                progress.milestone(Milestone::VmEnded, &format!("VM ended: {exit}"));
                return Err(SandboxError::VmDied {
                    exit,
                    log: self.paths.console_log.clone(),
                });
            }
        };
        drop(slot);
        progress.milestone(
            Milestone::AgentReady,
            &format!(
                "agent {} answered (guest kernel {})",
                agent.info.agent_version, agent.info.kernel_release
            ),
        );
        // The agent alone is checked until the sandbox's share is mounted
        // (a VM booted ahead may wait long for its sandbox); `attach`
        // checks the share too from then on.
        if let (Some(killer), Some(every)) = (killer, config.health_check()) {
            let exit = self.exit_watch();
            let check = guard::check_agent(agent.clone(), None, every, exit, killer.clone());
            self.agent_check = Some(check);
            self.health = Some((killer, every));
        }
        self.agent = Some(agent);
        Ok(())
    }

    /// Gives the booted VM its sandbox: the agent learns the sandbox and
    /// mounts the share, the guest NIC takes the pod's addresses, and
    /// port-forward reaches the pod.
    async fn attach(
        &mut self,
        options: &SandboxOptions,
        progress: &Progress,
    ) -> Result<(), SandboxError> {
        let agent = self.agent.clone().expect("a booted VM has an agent");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        agent
            .api()
            .create_sandbox(
                context(SETUP_CALL),
                &CreateSandboxRequest {
                    sandbox_id: self.id.clone(),
                    hostname: options.hostname.clone(),
                    shares: vec![SharedFilesystem {
                        tag: SHARE_TAG.into(),
                        mount_point: GUEST_SHARE_DIR.into(),
                        ..Default::default()
                    }],
                    host_time_unix_nanos: now,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| SandboxError::Agent {
                message: rpc_message(&e),
                log: self.paths.console_log.clone(),
            })?;
        if let Some(network) = &self.network {
            configure_guest_network(&agent, network)
                .await
                .map_err(|e| SandboxError::Agent {
                    message: format!("configuring the pod network: {}", rpc_message(&e)),
                    log: self.paths.console_log.clone(),
                })?;
            progress.step("guest network configured");
        }
        if let Some(netns) = &options.netns {
            // A pod runs without port-forward rather than not at all.
            match PortForwarder::start(netns, HybridVsock::new(&self.paths.vsock)) {
                Ok(forwarder) => self.port_forward = Some(forwarder),
                Err(err) => {
                    tracing::warn!(sandbox = %self.id, %err, "kubectl port-forward will not reach this pod")
                }
            }
        }
        if let Some((killer, every)) = self.health.clone() {
            if let Some(check) = self.agent_check.take() {
                check.abort();
            }
            let exit = self.exit_watch();
            self.guards.push(guard::check_agent(
                agent.clone(),
                Some(GUEST_SHARE_DIR),
                every,
                exit,
                killer,
            ));
        }
        progress.step("sandbox ready");
        Ok(())
    }

    async fn wait_for_vm_exit(&self) -> hypervisor::VmExit {
        crate::watch::wait_set_or_never(self.exit_watch()).await
    }

    /// Watches the VM's exit (`None` while it runs).
    pub fn exit_watch(&self) -> tokio::sync::watch::Receiver<Option<hypervisor::VmExit>> {
        match &self.hypervisor {
            Some(hypervisor) => hypervisor.exit_watch(),
            None => tokio::sync::watch::channel(None).1,
        }
    }

    /// The host processes of this sandbox (VMM, virtiofsd and what they
    /// forked, the vsock backend), for accounting.
    pub fn pids(&self) -> Vec<u32> {
        match &self.cgroup {
            Some(cgroup) => cgroup.pids(),
            None => Vec::new(),
        }
    }

    /// Kills the VM because a part of the sandbox failed.
    pub fn fail(&self, fault: hypervisor::Fault) {
        match self.hypervisor.as_ref().and_then(|h| h.killer()) {
            Some(killer) => killer.kill(fault),
            None => tracing::warn!(sandbox = %self.id, %fault, "no VM to stop"),
        }
    }

    /// The VMM's pid, while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.hypervisor.as_ref().and_then(|h| h.pid())
    }

    /// Starts a capped log at `path`; the pipe's write end is for a helper.
    fn log_pipe(
        &mut self,
        path: &Path,
        max_bytes: u64,
    ) -> Result<std::os::fd::OwnedFd, SandboxError> {
        let LogPipe { writer, copier } =
            capped_log(path, max_bytes).map_err(|source| SandboxError::Io {
                what: format!("creating the log {}", path.display()),
                source,
            })?;
        self.logs.push(copier);
        Ok(writer)
    }

    pub fn agent(&self) -> &AgentClient {
        self.agent.as_ref().expect("a started sandbox has an agent")
    }

    /// The sandbox's virtio-fs share on the host.
    pub fn share(&self) -> &SharedDir {
        self.share
            .as_ref()
            .expect("a started sandbox has its share")
    }

    /// Destroys the sandbox in the guest, stops the VM and every helper, and
    /// removes the state directory.
    pub async fn shutdown(mut self) {
        self.teardown(false).await;
    }

    async fn teardown(&mut self, keep_logs: bool) {
        // What follows ends parts of the sandbox on purpose.
        for guard in self.guards.drain(..).chain(self.agent_check.take()) {
            guard.abort();
        }
        self.port_forward = None;
        let vm_ended = self.exit_watch().borrow().is_some();
        if let Some(agent) = self.agent.take().filter(|_| !vm_ended) {
            let request = DestroySandboxRequest {
                power_off: true,
                ..Default::default()
            };
            let destroyed = agent
                .api()
                .destroy_sandbox(context(Duration::from_secs(10)), &request)
                .await;
            if let Err(err) = destroyed {
                // The agent powers off 20 ms after it answers; on a busy
                // host the VM can end before the answer leaves, which is
                // what was asked for. Only a VM that does not end is news.
                let ended = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::watch::wait_set(self.exit_watch()),
                )
                .await
                .is_ok_and(|exit| exit.is_some());
                if ended {
                    tracing::debug!(sandbox = %self.id, err = %rpc_message(&err), "the VM ended before DestroySandbox answered");
                } else {
                    tracing::warn!(sandbox = %self.id, err = %rpc_message(&err), "DestroySandbox failed");
                }
            }
        }
        if let Some(mut hypervisor) = self.hypervisor.take() {
            match hypervisor.stop(Duration::from_secs(5)).await {
                Ok(exit) => tracing::debug!(sandbox = %self.id, %exit, "VM stopped"),
                Err(err) => tracing::warn!(sandbox = %self.id, %err, "stopping the VM"),
            }
        }
        if let Some(network) = self.network.take() {
            network.teardown().await;
        }
        self.held_tap = None;
        if let Some(virtiofsd) = self.virtiofsd.take() {
            virtiofsd.stop(Duration::from_secs(2)).await;
        }
        // Whatever is left of the sandbox's processes (virtiofsd's sandboxed
        // child among them) dies with its cgroup.
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.destroy().await;
        }
        for copier in self.logs.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), copier).await;
        }
        self.share = None;
        remove_state(&self.paths, keep_logs);
        // Kept with the logs, which are found through it.
        if let Some(alias) = self.alias.take().filter(|_| !keep_logs) {
            if let Err(err) = std::fs::remove_file(&alias) {
                tracing::warn!(alias = %alias.display(), %err, "removing the sandbox's name");
            }
        }
    }
}

/// Where a sandbox's NIC comes from at boot.
enum Net<'a> {
    /// No NIC: the sandbox has no pod network namespace.
    None,
    /// A tap in the pod's network namespace, wired to its interface.
    Pod(&'a Path),
    /// A tap held in a namespace of its own until the pod is known.
    Held,
}

/// The MAC a VM booted ahead gives its NIC until the pod's replaces it:
/// locally administered, unicast, and different per VM name.
fn ahead_mac(name: &str) -> [u8; 6] {
    let bytes = crate::ids::stable_hash(name.as_bytes()).to_be_bytes();
    [0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]]
}

/// The user namespace virtiofsd runs in and the share's mounts are
/// id-mapped through, when virtiofsd runs unprivileged.
pub fn share_user_namespace(
    config: &Config,
) -> Result<Option<crate::sys::userns::IdMappedNamespace>, SandboxError> {
    use crate::config::UserNamespaceMode;
    let wanted = match (
        config.virtiofsd_user_namespace,
        rootfs::idmapped_shares_supported(),
    ) {
        (UserNamespaceMode::Off, _) => false,
        (_, Ok(())) => true,
        (UserNamespaceMode::Auto, Err(why)) => {
            // `hull check` warns about this host-wide fact; each sandbox
            // only records it.
            tracing::info!(%why, "virtiofsd runs as root: this kernel cannot id-map the share");
            false
        }
        (UserNamespaceMode::On, Err(why)) => return Err(SandboxError::NoIdMapping(why)),
    };
    if !wanted {
        return Ok(None);
    }
    crate::sys::userns::IdMappedNamespace::create(
        config.virtiofsd_id_base,
        crate::config::SHARE_ID_COUNT,
    )
    .map(Some)
    .map_err(|source| SandboxError::Io {
        what: "creating virtiofsd's user namespace".into(),
        source,
    })
}

/// What the sandbox's host processes may use together: the VM's RAM and
/// vCPUs plus the configured overheads.
fn host_limits(config: &Config, size: &VmSize) -> CgroupLimits {
    CgroupLimits::new(
        u64::from(size.memory_mib) + u64::from(config.sandbox_memory_overhead_mib),
        u64::from(size.vcpus) * 1000 + u64::from(config.sandbox_cpu_overhead_millicpus),
    )
}

fn check_assets(config: &Config) -> Result<(), SandboxError> {
    if !config.kernel.is_file() {
        return Err(SandboxError::MissingAsset {
            what: "guest kernel",
            path: config.kernel.clone(),
            hint: "run `make install`, or set `kernel` in Hull's configuration (HULL_CONFIG or /etc/hull/config.toml)",
        });
    }
    if !config.initrd.is_file() {
        return Err(SandboxError::MissingAsset {
            what: "guest initrd",
            path: config.initrd.clone(),
            hint: "run `make install`, or set `initrd` in Hull's configuration (HULL_CONFIG or /etc/hull/config.toml)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
